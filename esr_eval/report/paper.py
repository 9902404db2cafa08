"""The paper's published figures (docs/method.md) and the presets' parameter counts."""

from __future__ import annotations

# Llama-3.3-70B-Instruct, the paper's strongest resister.
PAPER_MODEL = "Llama-3.3-70B (paper)"
PAPER_PARAMS = 70e9
PAPER: dict[str, dict[str, float | str]] = {
    "steering_resistance": {"multi_attempt_rate": 0.074, "esr_rate": 0.038, "n": "~4,500-4,950"},
    "no_steering": {"multi_attempt_rate": 0.0, "n": "13,118", "mean_first_score": "88-92"},
    "meta_prompt": {"multi_attempt_rate": 0.317, "esr_rate": 0.148},
    "detector_ablation": {"multi_attempt_rate": 0.055, "esr_rate": 0.028},
    "random_ablation": {"multi_attempt_rate": 0.079, "esr_rate": 0.042},
    "boost_sweep": {"multi_attempt_rate": 0.027, "n": "peak over levels"},
}
SWEEP_PEAK_MULTI_ATTEMPT = 0.027
# Parameter counts of the presets (ESR against model size).
PRESET_PARAMS = {
    "smollm2-135m": 135e6,
    "gemma-3-270m": 270e6,
    "gemma-2-2b-it": 2.6e9,
    "gemma-2-9b-it": 9.2e9,
    "llama-3.1-8b-instruct": 8.0e9,
    "llama-3.3-70b-instruct": 70e9,
}
