"""lm-eval model `esr-steered`: Hugging Face HFLM with the project's SAE steering on every forward.

model_args: `pretrained` (preset, folder or hub id), `dictionary`, `layer`, `labels`, `dtype`,
`latent=K,value=V` (add V to latent K) and/or `ablate=DETECTORS.json` (clamp those latents to 0).

lm-eval's own CLI cannot see models registered outside lm-eval, so run it through this module
(it registers the model, then hands over to lm-eval; the packaged tasks are included):

    python -m esr_eval.lm_eval_model --model esr-steered \
        --model_args pretrained=smollm2-135m,latent=123,value=8 --tasks esr_mc

or compare conditions side by side with `esr-eval capability`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from esr_eval.provider import load_engine
from esr_eval.steering.engine import SteeredLM
from esr_eval.steering.hooks import BatchSteering
from esr_eval.steering.intervention import Intervention

TASK_DIR = Path(__file__).resolve().parent / "assets" / "lm_eval"
LOCAL_TASK = "esr_mc"


def read_detectors(path: str | Path) -> tuple[list[int], int | None]:
    """Latents and layer of a detectors file written by `esr-eval find-detectors`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"detectors file {path} does not exist: write it with `esr-eval find-detectors`")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("latents"), list):
        raise ValueError(f"{path} is not a detectors file: it needs a JSON object with a 'latents' list")
    return [int(k) for k in data["latents"]], (int(data["layer"]) if data.get("layer") is not None else None)


def steering_from_args(latent: Any = None, value: Any = 8.0, ablate: str | None = None) -> tuple[list[Intervention], int | None]:
    """Interventions for one condition, and the layer the detectors were found at (if any)."""
    interventions = [Intervention(int(latent), float(value), "add")] if latent not in (None, "") else []
    layer = None
    if ablate:
        latents, layer = read_detectors(ablate)
        interventions += [Intervention(k, 0.0, "clamp") for k in latents]
    return interventions, layer


def engine_for(pretrained: str, dictionary: str | None, layer: int | None, labels: str | None, dtype: str, steering: bool) -> SteeredLM:
    """The shared engine; with no steering and no dictionary asked for, none is loaded."""
    if steering or dictionary:
        return load_engine(pretrained, dictionary, layer, labels, dtype)
    from esr_eval.finetune.data import unsteered_engine

    return unsteered_engine(pretrained, dtype)


@register_model("esr-steered")
class SteeredHFLM(HFLM):
    """HFLM whose forward passes run inside the engine's residual hook with fixed interventions."""

    def __init__(
        self,
        pretrained: str = "smollm2-135m",
        dictionary: str | None = None,
        layer: int | str | None = None,
        labels: str | None = None,
        latent: int | str | None = None,
        value: float | str = 8.0,
        ablate: str | None = None,
        dtype: str = "float32",
        engine: SteeredLM | None = None,
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
        super().__init__(pretrained=engine.model, tokenizer=engine.tokenizer, backend="causal", **kwargs)
        self.engine = engine
        self.interventions = interventions

    def _steering(self, batch: int) -> BatchSteering | None:
        dtype = next(self.engine.model.parameters()).dtype
        return BatchSteering.build([self.interventions] * batch, self.engine.dictionary, dtype)

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        with self.engine.hooks.active(self._steering(inps.shape[0])):
            return super()._model_call(inps, attn_mask, labels)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs) -> torch.Tensor:
        with self.engine.hooks.active(self._steering(context.shape[0])):
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


def _capability(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from esr_eval.io import atomic_write_text

    conditions: list[tuple[str, dict[str, Any]]] = [("plain", {})]
    if args.latent is not None:
        conditions.append((f"steered (latent {args.latent} +{args.value:g})", {"latent": args.latent, "value": args.value}))
    if args.ablate:
        conditions.append((f"ablated ({Path(args.ablate).name})", {"ablate": args.ablate}))
        steering_from_args(ablate=args.ablate)  # a bad file fails before the model loads
    engine = engine_for(args.model, args.dictionary, args.layer, args.labels, args.dtype, len(conditions) > 1)
    manager = task_manager(args.tasks, args.include_path)
    rows: dict[str, Any] = {}
    for name, steer in conditions:
        lm = SteeredHFLM(engine=engine, batch_size=args.batch_size, **steer)
        results = evaluate(lm, args.tasks, args.limit, manager)["results"]
        rows[name] = results
    table = Table(title=f"{args.model}: accuracy by condition (lm-eval)")
    table.add_column("condition")
    for task in args.tasks:
        table.add_column(f"{task} acc", justify="right")
        table.add_column(f"{task} acc_norm", justify="right")
    for name, results in rows.items():
        cells = []
        for task in args.tasks:
            r = results[task]
            for metric in ("acc", "acc_norm"):
                value, err = r.get(f"{metric},none"), r.get(f"{metric}_stderr,none")
                cells.append("-" if value is None else f"{value:.3f} ± {err:.3f}" if isinstance(err, float) else f"{value:.3f}")
        table.add_row(name, *cells)
    Console().print(table)
    if args.out:
        atomic_write_text(args.out, json.dumps({"model": args.model, "conditions": rows}, indent=2, default=str))
    return 0


def register(sub) -> None:
    p = sub.add_parser("capability", help="lm-eval accuracy plain vs steered vs detector-ablated, side by side")
    p.add_argument("--model", default="smollm2-135m", help="preset, folder or hub id")
    p.add_argument("--dictionary", help="SAE / direction-set folder or preset (default: the model preset's)")
    p.add_argument("--layer", type=int)
    p.add_argument("--labels")
    p.add_argument("--latent", type=int, help="latent to add in the steered condition")
    p.add_argument("--value", type=float, default=8.0, help="boost added to the latent")
    p.add_argument("--ablate", help="detectors JSON whose latents are clamped to 0 in the ablated condition")
    p.add_argument("--tasks", nargs="+", default=[LOCAL_TASK], help="lm-eval task names")
    p.add_argument("--include-path", help=f"extra lm-eval task folder (default: the packaged {LOCAL_TASK})")
    p.add_argument("--limit", type=int, help="questions per task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out", help="write the lm-eval results of every condition to this JSON file")
    p.set_defaults(func=_capability)


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
