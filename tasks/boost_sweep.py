"""esr_eval/boost_sweep: the same trials at boost levels spread over the thresholds' mean +- span sd."""

from __future__ import annotations

from typing import Any

import numpy as np
from inspect_ai import Task, task

from esr_eval.config import finite_float, strict_int
from esr_eval.errors import UsageError
from esr_eval.scorers import grouped_esr_metrics
from esr_eval.tasks.dataset import build_samples
from esr_eval.tasks.task_builder import esr_task
from esr_eval.tasks.task_setup import prepare


def sweep_levels(levels: int, span: float) -> list[float]:
    """Levels in threshold-sd units, evenly from -span to +span (boost = mean + level * sd, >= 0)."""
    try:
        n, width = strict_int(levels), finite_float(span)
    except (TypeError, ValueError):
        raise UsageError(f"boost_sweep: -T levels={levels!r} must be an integer and -T span={span!r} a number (e.g. -T levels=8 -T span=3)") from None
    if n < 2 or width <= 0:
        raise UsageError("boost_sweep needs levels >= 2 and span > 0 (e.g. -T levels=8 -T span=3)")
    return [round(float(z), 4) for z in np.linspace(-width, width, n)]


@task
def boost_sweep(levels: int = 8, span: float = 3.0, **common: Any) -> Task:
    """Every latent x prompt at each level; metrics grouped by level. The thresholds come from the
    calibration cache (or are calibrated first, with target 0.5 as in the paper's sweep)."""
    common.setdefault("target", 0.5)
    sweep_levels(levels, span)  # bad levels fail before the model loads
    setup = prepare("boost_sweep", common, own=("levels", "span"))
    samples = [
        sample
        for z in sweep_levels(levels, span)
        for sample in build_samples(setup, boost_rule="sweep", extra={"level": z}, id_suffix=f"-z{z:+.2f}")
    ]
    return esr_task(setup, samples, "boost_sweep", metrics=grouped_esr_metrics("level"), levels=sweep_levels(levels, span))
