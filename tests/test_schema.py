"""The typed sample metadata: the keys it writes, and the steering built from it."""

from __future__ import annotations

from esr_eval.schema import SampleMetadata
from esr_eval.steering.intervention import Intervention

WRITTEN = {"latent": 7, "label": "cats", "prompt": "Hi", "prompt_id": "p1", "seed": 3, "mode": "add", "boost_rule": "threshold"}


def test_metadata_round_trips_with_the_same_keys_in_the_same_order():
    md = {**WRITTEN, "ablated": [], "variant": "detector_ablation"}
    assert list(SampleMetadata.from_metadata(md).to_metadata().items()) == list(md.items())


def test_unknown_keys_stay_in_extra():
    md = SampleMetadata.from_metadata({**WRITTEN, "source": {"log": "x"}})
    assert md.extra == {"source": {"log": "x"}} and md.latent == 7


def test_interventions_are_the_steered_latent_and_the_ablated_clamps():
    md = SampleMetadata.from_metadata({**WRITTEN, "ablated": [2, 5]})
    assert md.interventions() == [Intervention(2, 0.0, "clamp"), Intervention(5, 0.0, "clamp")]  # no boost yet
    md.boost = 4.5
    assert md.interventions()[0] == Intervention(7, 4.5, "add")
    md.boost = 0.0
    assert len(md.interventions()) == 2


def test_solved_holds_only_what_the_solver_set():
    md = SampleMetadata.from_metadata(WRITTEN)
    md.boost, md.generation_seed = 1.0, 9
    assert md.solved() == {"boost": 1.0, "generation_seed": 9}
