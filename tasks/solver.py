"""The steered solver: resolve the sample's boost, then generate with its steering."""

from __future__ import annotations

from typing import Any

import numpy as np
from inspect_ai.model import ChatMessageAssistant
from inspect_ai.solver import Generate, Solver, TaskState, solver

from esr_eval.calibration.calibrator import Calibrator
from esr_eval.sampling.seeds import epoch_seed
from esr_eval.schema import SampleMetadata
from esr_eval.steering.intervention import steering_to_extra_body


@solver
def steered_generate(calibrator: Calibrator, labels: dict[int, str], generation: dict[str, Any]) -> Solver:
    """The boost is the latent's threshold, zero, a sweep level over all thresholds, or given in
    the metadata (rule "given"); the steering (and any ablation) goes in `extra_body`. Each epoch
    draws its own seed (metadata `generation_seed`), so repeated epochs are new trials. A
    metadata "prefix" is put in the assistant's turn, so the answer continues it."""

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        md = SampleMetadata.from_metadata(state.metadata)
        rule = md.boost_rule
        if rule in ("threshold", "sweep"):
            assert md.latent is not None and md.label is not None, "a calibrated sample needs its latent and label"
            result = await calibrator.threshold(md.latent, md.label)
            md.threshold, md.calibration_trials = result.threshold, result.trials
            md.calibration_score, md.calibration_judge_errors = result.score, result.judge_errors
        if rule == "threshold":
            md.boost = md.threshold
        elif rule == "sweep":
            assert md.level is not None, "a sweep sample needs its level"
            thresholds = list((await calibrator.all_thresholds(labels)).values())
            md.boost = max(0.0, float(np.mean(thresholds) + md.level * np.std(thresholds)))
        elif rule == "zero":
            md.boost = 0.0
        steering = steering_to_extra_body(md.interventions(), calibrator.dictionary_id)
        assert md.seed is not None, "a steered sample needs its seed"
        md.generation_seed = epoch_seed(md.seed, state.epoch)
        state.metadata.update(md.solved())
        if md.prefix:  # the start of the answer, in the model's own turn: it continues it
            state.messages.append(ChatMessageAssistant(content=md.prefix))
        return await generate(state, extra_body=steering, seed=md.generation_seed, **generation)

    return solve
