"""Training: the shipped SAEs (`sae/`) and self-correction fine-tuning (`finetune/`)."""
