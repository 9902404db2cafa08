"""Self-correction fine-tuning: data synthesis (`data`) and LoRA training with a merge (`train`);
what it records about a model is `schema.FinetuneInfo`."""
