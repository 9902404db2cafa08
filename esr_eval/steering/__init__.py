"""The steered local model: SAE interventions in the residual stream, independent of Inspect."""

from esr_eval.steering.intervention import (
    Intervention,
    steering_from_extra_body,
    steering_to_extra_body,
)

__all__ = ["Intervention", "steering_from_extra_body", "steering_to_extra_body"]
