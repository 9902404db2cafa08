"""lm-eval model `esr-steered`: Hugging Face HFLM with the project's SAE steering on every forward.

model_args: `pretrained` (preset, folder or hub id), `dictionary`, `layer`, `labels`, `dtype`,
`latent=K,value=V` (add V to latent K) and/or `ablate=DETECTORS.json` (clamp those latents to 0).

lm-eval's own CLI cannot see models registered outside lm-eval, so run it through this module
(it registers the model, then hands over to lm-eval; the packaged tasks are included):

    python -m esr_eval.capability.lm_eval_model --model esr-steered \
        --model_args pretrained=smollm2-135m,latent=123,value=8 --tasks esr_mc

or compare conditions side by side with `esr-eval capability`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from esr_eval.config import FULL_PRECISION_DTYPE, asset_path
from esr_eval.config import LM_EVAL_TASK as LOCAL_TASK
from esr_eval.schema import DetectorsFile
from esr_eval.steering.engine import SteeringEngine
from esr_eval.steering.intervention import Intervention
from esr_eval.steering.load import load_engine, load_unsteered_engine

TASK_DIR = asset_path("lm_eval")


def steering_from_args(latent: Any = None, value: Any = 8.0, ablate: str | None = None) -> tuple[list[Intervention], int | None]:
    """Interventions for one condition, and the layer the detectors were found at (if any)."""
    interventions = [Intervention(int(latent), float(value), "add")] if latent not in (None, "") else []
    layer = None
    if ablate:
        detectors = DetectorsFile.read(ablate)
        layer = detectors.layer
        interventions += [Intervention(k, 0.0, "clamp") for k in detectors.latents]
    return interventions, layer


def engine_for(pretrained: str, dictionary: str | None, layer: int | None, labels: str | None, dtype: str, steering: bool) -> SteeringEngine:
    """The shared engine; with no steering and no dictionary asked for, none is loaded."""
    if steering or dictionary:
        return load_engine(pretrained, dictionary, layer, labels, dtype)
    return load_unsteered_engine(pretrained, dtype)


@register_model("esr-steered")
class SteeredHFLM(HFLM):
    """HFLM whose forward passes run inside the engine's `steered_forward` with fixed interventions
    (an engine with an in-process torch model: the hf backend)."""

    def __init__(
        self,
        pretrained: str = "smollm2-135m",
        dictionary: str | None = None,
        layer: int | str | None = None,
        labels: str | None = None,
        latent: int | str | None = None,
        value: float | str = 8.0,
        ablate: str | None = None,
        dtype: str = FULL_PRECISION_DTYPE,
        engine: SteeringEngine | None = None,
        **kwargs: Any,
    ) -> None:
        interventions, detector_layer = steering_from_args(latent, value, ablate)
        layer = None if layer in (None, "") else int(layer)
        if engine is None:
            engine = engine_for(str(pretrained), dictionary, layer, labels, str(dtype), bool(interventions))
        if interventions:
            if engine.dictionary is None:
                raise ValueError("steering needs a dictionary: add dictionary=... to --model_args")
            for iv in interventions:
                engine.dictionary.check_latent(iv.latent)
        if detector_layer is not None and detector_layer != engine.layer:
            raise ValueError(
                f"the detectors were found at layer {detector_layer} but the dictionary hooks layer {engine.layer}: "
                f"pass layer={detector_layer} or detectors found with this dictionary"
            )
        kwargs.pop("device", None)  # an already-loaded model stays where it is
        kwargs.setdefault("batch_size", 8)
        super().__init__(pretrained=engine.torch_model(), tokenizer=engine.tokenizer, backend="causal", **kwargs)
        self.engine = engine
        self.interventions = interventions

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        with self.engine.steered_forward(self.interventions, inps.shape[0]):
            return super()._model_call(inps, attn_mask, labels)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs) -> torch.Tensor:
        with self.engine.steered_forward(self.interventions, context.shape[0]):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)


def task_manager(tasks: Sequence[str] = (LOCAL_TASK,), include_path: str | Path | None = None):
    """The packaged tasks (+ include_path); lm-eval's own thousands are indexed only when asked for."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASK_DIR)] + ([str(include_path)] if include_path else [])
    only_local = include_path is None and set(tasks) <= {LOCAL_TASK}
    return TaskManager(include_path=paths, include_defaults=not only_local)


def evaluate(lm: SteeredHFLM, tasks: Sequence[str] = (LOCAL_TASK,), limit: int | None = None, manager=None) -> dict[str, Any]:
    """lm-eval results dict for one model condition."""
    from lm_eval import simple_evaluate

    return simple_evaluate(
        model=lm,
        tasks=list(tasks),
        limit=limit,
        task_manager=manager or task_manager(tasks),
        log_samples=False,
        bootstrap_iters=1000,
        verbosity="WARNING",
    )


def main(argv: list[str] | None = None) -> None:
    """lm-eval's CLI with `esr-steered` registered and the packaged tasks on the include path."""
    from lm_eval.__main__ import cli_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--include_path" not in argv:
        argv += ["--include_path", str(TASK_DIR)]
    sys.argv = ["lm_eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
