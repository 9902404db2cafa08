"""Engine backends: `hf` (our own decode loop over transformers)."""
