"""Training the shipped SAEs: corpus, activations, TopK training, quality and labels."""
