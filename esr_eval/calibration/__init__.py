"""How hard to push each latent: bisection (pure), the threshold cache, the calibrator."""
