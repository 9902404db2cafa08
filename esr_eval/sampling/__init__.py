"""What an ESR run samples: prompts (one file parser), latents and their filters."""
