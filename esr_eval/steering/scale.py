"""A latent's steering scale: how large a push is, relative to the residual stream it is added to
(the median residual norm at the hook layer over some prompts, divided by the norm of the latent's
decoder row). Calibration bounds and steered training data are set in these units."""

from __future__ import annotations

from collections.abc import Sequence

from esr_eval.steering.dictionary import FeatureDictionary
from esr_eval.steering.engine import SteeringEngine


def median_residual_norm(engine: SteeringEngine, prompts: Sequence[str], n_prompts: int = 8) -> float:
    import torch

    resid = engine.prompt_residuals([[{"role": "user", "content": p}] for p in prompts[:n_prompts]])
    return float(torch.cat(resid).norm(dim=-1).median())


def steering_scale(residual_norm: float, dictionary: FeatureDictionary, latent: int) -> float:
    return residual_norm / float(dictionary.W_dec[latent].detach().norm().clamp_min(1e-8))
