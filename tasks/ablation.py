"""esr_eval/detector_ablation and esr_eval/random_ablation: clamp latents to 0 while steering.

Both reuse the baseline's latents, prompts, seeds and thresholds (the calibration cache), so a
difference from steering_resistance is the ablation's alone. Both run on prompts held out from
the detectors' discovery: a run on any prompt the detectors file records is refused.
"""

from __future__ import annotations

from typing import Any

from inspect_ai import Task, task

from esr_eval.detectors.controls import control_frequencies, matched_controls
from esr_eval.errors import UsageError
from esr_eval.sampling.prompts import prompt_set_name, prompt_texts
from esr_eval.schema import DetectorsFile
from esr_eval.scorers import grouped_esr_metrics
from esr_eval.steering.dictionary import DirectionSet
from esr_eval.tasks.dataset import build_samples
from esr_eval.tasks.task_builder import esr_task
from esr_eval.tasks.task_setup import Setup, prepare


def read_task_detectors(path: str | None, common: dict[str, Any]) -> tuple[DetectorsFile, list[str]]:
    """The detectors file and its notes, refused before the model loads when the run's prompts
    (-T prompts) overlap the prompts the detectors were discovered on."""
    if not path:
        raise UsageError("pass -T detectors=FILE (make one with `esr-eval find-detectors --out detectors.json`)")
    found = DetectorsFile.read(path)
    spec = None if common.get("prompts") in (None, "") else str(common["prompts"])
    note = found.check_held_out(prompt_texts(spec), prompt_set_name(spec), path)
    return found, [note] if note else []


def check_detectors(found: DetectorsFile, path: str, setup: Setup) -> None:
    steered = setup.api.engine.dictionary
    if isinstance(steered, DirectionSet):
        raise UsageError(
            f"{steered.name} is a vector set, but detector ablation clamps the SAE latents in {path}: "
            "run the ablation tasks with the SAE (leave -M dictionary out for a preset)"
        )
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
    found, notes = read_task_detectors(detectors, common)  # before the model loads
    setup = prepare("detector_ablation", common, own=("detectors",))
    setup.notes += notes
    check_detectors(found, str(detectors), setup)
    samples = build_samples(setup, extra={"ablated": found.latents, "variant": "detector_ablation"})
    return esr_task(setup, samples, "detector_ablation", detectors=found.latents)


@task
def random_ablation(detectors: str | None = None, n_sets: int = 3, control_seed: int = 0, **common: Any) -> Task:
    """Control for detector_ablation: `n_sets` sets of as many random latents, each matched to a
    detector's firing-frequency bin; metrics per set (metadata "control_set") and pooled."""
    found, notes = read_task_detectors(detectors, common)
    setup = prepare("random_ablation", common, own=("detectors", "n_sets", "control_seed"))
    setup.notes += notes
    check_detectors(found, str(detectors), setup)
    sets = matched_controls(found.latents, control_frequencies(found, setup.api.engine.dictionary), int(n_sets), int(control_seed))
    samples = [
        sample
        for j, ablated in enumerate(sets)
        for sample in build_samples(setup, extra={"ablated": ablated, "control_set": j, "variant": "random_ablation"}, id_suffix=f"-r{j}")
    ]
    return esr_task(setup, samples, "random_ablation", metrics=grouped_esr_metrics("control_set"), control_sets=sets)
