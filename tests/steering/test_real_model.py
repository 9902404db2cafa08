"""The real embedded model (slow: minutes on CPU). Run with `pytest -m slow`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from esr_eval.steering.load import load_engine

    return load_engine("smollm2-135m")


def test_embedded_model_loads_and_steers(smollm2):
    from esr_eval.steering.engine import GenerationRequest
    from esr_eval.steering.intervention import Intervention

    assert smollm2.layer == 18 and smollm2.dictionary.d_model == 576
    assert len(smollm2.dictionary.labels) > 1000
    prompt = [{"role": "user", "content": "Explain how to brew coffee."}]
    latent = next(iter(sorted(smollm2.dictionary.labels)))
    plain, steered = smollm2.generate(
        [GenerationRequest(prompt, (), 24, 0.0), GenerationRequest(prompt, (Intervention(latent, 400.0),), 24, 0.0)]
    )
    assert plain.completion_tokens > 5 and plain.text
    assert steered.text != plain.text


def test_no_flag_command_succeeds(tmp_path):
    """`inspect eval esr_eval/steering_resistance` exactly as the README runs it, from a clean cache."""
    env = {**os.environ, "ESR_EVAL_CACHE": str(tmp_path / "cache"), "INSPECT_DISPLAY": "none"}
    inspect = Path(sys.executable).with_name("inspect")
    subprocess.run([str(inspect), "eval", "esr_eval/steering_resistance", "--log-dir", str(tmp_path / "logs")], env=env, check=True, timeout=2400)
    from inspect_ai.log import list_eval_logs, read_eval_log

    logs = list_eval_logs(str(tmp_path / "logs"))
    assert len(logs) == 1
    log = read_eval_log(logs[0])
    assert log.status == "success"
    assert log.eval.model == "steered/smollm2-135m"
    assert {s.scores["attempts_judge"].metadata["grader"] for s in log.samples} == {"esr_judge/minilm"}
    metrics = {k: m.value for s in log.results.scores for k, m in s.metrics.items()}
    assert metrics["n"] == 40 and metrics["judge_errors"] == 0
