"""esr_eval/detector_ablation and esr_eval/random_ablation: clamp latents to 0 while steering.

Both reuse the baseline's latents, prompts, seeds and thresholds (the calibration cache), so a
difference from steering_resistance is the ablation's alone.
"""

from __future__ import annotations

from typing import Any

from esr_eval.scorers import grouped_esr_metrics
from esr_eval.tasks.dataset import build_samples
from esr_eval.tasks.loop import esr_task
from esr_eval.tasks.setup import Setup, prepare
from inspect_ai import Task, task

from esr_eval.detectors.controls import control_frequencies, matched_controls
from esr_eval.errors import UsageError
from esr_eval.schema import DetectorsFile


def read_task_detectors(path: str | None) -> DetectorsFile:
    if not path:
        raise UsageError("pass -T detectors=FILE (make one with `esr-eval find-detectors --out detectors.json`)")
    return DetectorsFile.read(path)


def check_detectors(found: DetectorsFile, path: str, setup: Setup) -> None:
    if found.dictionary not in (None, setup.calibrator.dictionary_id):
        raise UsageError(
            f"{path} was found on dictionary {found.dictionary}, this model steers "
            f"{setup.calibrator.dictionary_id}: rerun find-detectors on this model"
        )
    for k in found.latents:
        setup.api.engine.dictionary.check_latent(k)


@task
def detector_ablation(detectors: str | None = None, **common: Any) -> Task:
    """Steer as in steering_resistance with the off-topic detectors clamped to 0 on every token."""
    found = read_task_detectors(detectors)  # before the model loads
    setup = prepare("detector_ablation", common, own=("detectors",))
    check_detectors(found, str(detectors), setup)
    samples = build_samples(setup, extra={"ablated": found.latents, "variant": "detector_ablation"})
    return esr_task(setup, samples, "detector_ablation", detectors=found.latents)


@task
def random_ablation(detectors: str | None = None, n_sets: int = 3, control_seed: int = 0, **common: Any) -> Task:
    """Control for detector_ablation: `n_sets` sets of as many random latents, each matched to a
    detector's firing-frequency bin; metrics per set (metadata "control_set") and pooled."""
    found = read_task_detectors(detectors)
    setup = prepare("random_ablation", common, own=("detectors", "n_sets", "control_seed"))
    check_detectors(found, str(detectors), setup)
    sets = matched_controls(found.latents, control_frequencies(found, setup.api.engine.dictionary), int(n_sets), int(control_seed))
    samples = [
        sample
        for j, ablated in enumerate(sets)
        for sample in build_samples(setup, extra={"ablated": ablated, "control_set": j, "variant": "random_ablation"}, id_suffix=f"-r{j}")
    ]
    return esr_task(setup, samples, "random_ablation", metrics=grouped_esr_metrics("control_set"), control_sets=sets)
