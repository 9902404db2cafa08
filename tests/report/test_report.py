"""The comparison report: exact table cells from canned logs, plots present only where they apply."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import esr_value, run_canned

from esr_eval.cli import main
from esr_eval.report.runs import load_runs, model_params
from esr_eval.report.tables import tables

PNG = b"\x89PNG\r\n\x1a\n"


def _rows(values: list[dict], **meta_lists) -> list[dict]:
    """Canned rows; trials come in pairs that share a latent (latent i // 2)."""
    return [
        {"scores": {"judge": {"value": v}}, "metadata": {"latent": i // 2, **{k: vals[i] for k, vals in meta_lists.items()}}}
        for i, v in enumerate(values)
    ]


# 4 judged trials (2 multi-attempt, 1 ESR) + one judge error (out of n, counted apart)
SMALL = [esr_value(30, 80), esr_value(40), esr_value(50, 20), esr_value(60), esr_value(0, judge_error=1)]
# 3 trials, the ESR one degraded
LARGER = [esr_value(20, 90, degraded=1), esr_value(70), esr_value(80)]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("logs")
    run_canned(d, _rows(SMALL), model="mockllm/smollm2-135m", task_args={"n_latents": 4})
    run_canned(d, _rows(LARGER), model="mockllm/gemma-3-270m")
    run_canned(d, _rows(SMALL[:4], level=[-1.0, 1.0, -1.0, 1.0]), task="boost_sweep", model="mockllm/smollm2-135m")
    run_canned(d, _rows(SMALL[:4]), task="detector_ablation", model="mockllm/smollm2-135m")
    run_canned(d, _rows(LARGER), task="random_ablation", model="mockllm/smollm2-135m")
    run_canned(d, _rows(SMALL[:4], variant=["a", "b", "a", "b"]), task="meta_prompt", model="mockllm/smollm2-135m")
    run_canned(d, _rows(SMALL[:2]), task="meta_prompt", model="mockllm/smollm2-135m", fail=True)  # an older failed try
    return d


def test_tables_exact(log_dir):
    t = tables(load_runs([str(log_dir)]))
    assert sorted(t) == ["boost_sweep", "detector_ablation", "meta_prompt", "random_ablation", "steering_resistance"]
    main_rows = t["steering_resistance"]
    assert main_rows[0] == [
        "mockllm/smollm2-135m",
        "135M",
        "n_latents=4",
        "4",
        "3",
        "50.0% [15.0, 85.0]",  # 1 of 2 in both latents: no spread between them, plain Wilson
        "25.0% [4.6, 69.9]",
        "25.0%",
        "45.0 [-82.1, 172.1]",  # latent means 35 and 55: a t interval on 1 degree of freedom
        "1",
        "success",
    ]
    assert main_rows[1][:8] == [
        "mockllm/gemma-3-270m",
        "270M",
        "-",
        "3",
        "2",
        "33.3% [6.1, 79.2]",
        "33.3% [6.1, 79.2]",
        "0.0%",
    ]
    assert main_rows[1][8].startswith("56.7 [")
    assert main_rows[2][:7] == ["Llama-3.3-70B (paper)", "70B", "-", "~4,500-4,950", "-", "7.4%", "3.8%"]
    # the newer failed run of meta_prompt is shown, not the older success it replaces
    assert [r[-1] for r in t["meta_prompt"]] == ["error", "published"]
    assert t["meta_prompt"][-1][5:7] == ["31.7%", "14.8%"]


def test_newer_success_replaces_older_failure(tmp_path):
    run_canned(tmp_path, _rows(SMALL[:2]), fail=True)
    run_canned(tmp_path, _rows(SMALL[:4]))
    [row, _paper] = tables(load_runs([str(tmp_path)]))["steering_resistance"]
    assert row[-1] == "success" and row[3] == "4"


def test_clustered_interval_is_wider_than_independent_trials(tmp_path):
    # 4 latents x 2 prompts; both trials of latents 0 and 1 are multi-attempt, none of 2 and 3
    values = [esr_value(30, 80)] * 4 + [esr_value(50)] * 4
    run_canned(tmp_path / "clustered", _rows(values))
    run_canned(tmp_path / "independent", [{"scores": {"judge": {"value": v}}, "metadata": {"latent": i}} for i, v in enumerate(values)])
    clustered = tables(load_runs([str(tmp_path / "clustered")]))["steering_resistance"][0]
    independent = tables(load_runs([str(tmp_path / "independent")]))["steering_resistance"][0]
    assert independent[4:6] == ["8", "50.0% [21.5, 78.5]"]  # Wilson 4/8
    assert clustered[4:6] == ["4", "50.0% [15.0, 85.0]"]  # design effect 2: Wilson 2/4


def test_model_params_sources(log_dir):
    from inspect_ai.log import read_eval_log

    log = read_eval_log(next(log_dir.glob("*.eval")), header_only=True)
    log.eval.model = "openai/qwen2.5-1.5b-instruct"
    assert model_params(log) == 1.5e9
    log.eval.model_args = {"n_params": 123}
    assert model_params(log) == 123.0
    log.eval.model_args, log.eval.model = {}, "steered/llama-3.3-70b-instruct"
    assert model_params(log) == 70e9


def test_report_files_and_plots(log_dir, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(log_dir), "--out", str(out)]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "ablation.png",
        "boost_sweep.png",
        "esr_vs_size.png",
        "meta_prompt.png",
        "rates_boost_sweep.png",
        "rates_detector_ablation.png",
        "rates_meta_prompt.png",
        "rates_random_ablation.png",
        "rates_steering_resistance.png",
    ]
    for p in out.glob("*.png"):
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    md = (out / "report.md").read_text()
    assert "| mockllm/smollm2-135m | 135M | n_latents=4 | 4 | 3 | 50.0% [15.0, 85.0] |" in md
    assert "![esr_vs_size](esr_vs_size.png)" in md
    html = (out / "report.html").read_text()
    assert "<img src='boost_sweep.png'" in html and "<td>Llama-3.3-70B (paper)</td>" in html


def test_plots_only_for_present_tasks(tmp_path):
    d = tmp_path / "logs"
    run_canned(d, _rows(LARGER), model="mockllm/some-model")
    out = tmp_path / "out"
    assert main(["report", str(d), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["rates_steering_resistance.png"]  # no size known


def test_finetune_runs_plotted_against_mixing_ratio(tmp_path):
    from esr_eval.report.plots import finetune_series

    d = tmp_path / "logs"
    run_canned(d, _rows(LARGER), model="steered/smollm2-135m")
    run_canned(d, _rows([esr_value(80)] * 3), task="no_steering", model="steered/smollm2-135m")
    run_canned(d, _rows(LARGER), model="steered/other-model")  # not the tuned models' base: left out
    for ratio, steered, plain in ((0.9, SMALL, [esr_value(70, 90)] * 2), (0.1, LARGER, [esr_value(70)] * 2)):
        tuned = {"finetune": {"base_model": "smollm2-135m", "mixing_ratio": ratio}}
        name = f"steered//models/tuned-r{int(100 * ratio)}"
        run_canned(d, _rows(steered), model=name, task_metadata=tuned)
        run_canned(d, _rows(plain), task="no_steering", model=name, task_metadata=tuned)
    runs = load_runs([str(d)])
    counts = {name: [(r, round(e.value * e.n), e.n) for r, e in pts] for name, pts in finetune_series(runs).items()}
    assert counts == {
        "multi-attempt (steered)": [(None, 1, 3), (0.1, 1, 3), (0.9, 2, 4)],
        "ESR (steered)": [(None, 1, 3), (0.1, 1, 3), (0.9, 1, 4)],
        "false alarms (no steering)": [(None, 0, 3), (0.1, 0, 2), (0.9, 2, 2)],
    }
    out = tmp_path / "out"
    assert main(["report", str(d), "--out", str(out)]) == 0
    assert (out / "finetune.png").read_bytes().startswith(PNG)
    assert "| tuned-r90 (smollm2-135m + 90% self-correction) | 135M |" in (out / "report.md").read_text()
    assert finetune_series([r for r in runs if "tuned" not in r.model]) == {}


def test_positive_control_plotted_against_its_base(tmp_path):
    from esr_eval.report.plots import finetune_series, positive_control_series

    d = tmp_path / "logs"
    tuned = {"finetune": {"base_model": "smollm2-135m", "mixing_ratio": 0.5, "recipe": "steered self-correction"}}
    run_canned(d, _rows([esr_value(30)] * 4), model="steered/smollm2-135m")
    run_canned(d, _rows([esr_value(80)] * 4), task="no_steering", model="steered/smollm2-135m")
    run_canned(d, _rows([esr_value(20, 70)] * 3 + [esr_value(30)]), model="steered/smollm2-135m-resist", task_metadata=tuned)
    run_canned(d, _rows([esr_value(80)] * 3 + [esr_value(60, 50)]), task="no_steering", model="steered/smollm2-135m-resist", task_metadata=tuned)
    runs = load_runs([str(d)])
    series = positive_control_series(runs)
    assert list(series) == ["smollm2-135m", "smollm2-135m-resist"]
    values = {m: {k: e.value for k, e in rates.items()} for m, rates in series.items()}
    assert values["smollm2-135m-resist"] == {"multi-attempt, steered": 0.75, "ESR, steered": 0.75, "false alarms, no steering": 0.25}
    assert values["smollm2-135m"] == {"multi-attempt, steered": 0.0, "ESR, steered": 0.0, "false alarms, no steering": 0.0}
    assert finetune_series(runs) == {}  # not a mixing-ratio sweep
    out = tmp_path / "out"
    assert main(["report", str(d), "--out", str(out)]) == 0
    assert (out / "positive_control.png").read_bytes().startswith(PNG)
    assert not (out / "finetune.png").exists()
    assert "smollm2-135m-resist (smollm2-135m + 50% steered self-correction)" in (out / "report.md").read_text()


def test_report_bad_input(tmp_path):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(tmp_path)]) == 2


# ---------------------------------------------------------------- compare: an eval set over two models

TASK_FILE = """
from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.scorer import Score, scorer
from inspect_ai.solver import generate


@scorer(metrics=[])
def words_judge():
    async def score(state, target):
        multi = float(len(state.output.completion.split()) % 2 == 0)
        value = {"n_attempts": 1 + multi, "first_score": 50.0, "last_score": 50.0 + multi, "multi_attempt": multi,
                 "esr": multi, "improvement": multi, "degraded": 0.0, "judge_error": 0.0}
        return Score(value=value, metadata={"grader": "words"})
    return score


@task
def demo(n: int = 2):
    samples = [Sample(input=f"Explain how to brew coffee, step {i}.") for i in range(int(n))]
    return Task(dataset=samples, solver=generate(max_tokens=8, seed=1), scorer=words_judge())
"""


def test_compare_runs_an_eval_set(tmp_path, tiny_model_dir, tiny_sae_dir, capsys):
    import shutil

    from inspect_ai.log import list_eval_logs, read_eval_log

    task_file = tmp_path / "demo_task.py"
    task_file.write_text(TASK_FILE)
    second = tmp_path / "tiny-b"
    shutil.copytree(tiny_model_dir, second)
    log_dir = tmp_path / "compare"
    args = [
        "compare",
        "--models",
        f"{tiny_model_dir},{second}",
        "--task",
        f"{task_file}@demo",
        "-T",
        "n=3",
        "-M",
        f"dictionary={tiny_sae_dir}",
        "--log-dir",
        str(log_dir),
        "--display",
        "none",
    ]
    assert main(args) == 0
    logs = [read_eval_log(i.name) for i in list_eval_logs(str(log_dir))]
    assert sorted(log.eval.model for log in logs) == sorted(f"steered/{p}" for p in (tiny_model_dir, second))
    assert all(log.status == "success" and len(log.samples) == 3 and log.eval.task_args == {"n": 3} for log in logs)
    out = capsys.readouterr().out
    assert "demo" in out and "tiny-b" in out
    assert main(args) == 0  # a rerun finds the finished logs and runs nothing new
    assert len(list_eval_logs(str(log_dir))) == 2


def test_compare_model_names():
    from esr_eval.gate.eval_set_args import model_names, parse_kv

    assert model_names("smollm2-135m, gemma-3-270m") == ["steered/smollm2-135m", "steered/gemma-3-270m"]
    assert model_names("mockllm/model,meta-llama/Llama-3.1-8B") == ["mockllm/model", "steered/meta-llama/Llama-3.1-8B"]
    assert parse_kv(["n=3", "latents=[1,2]", "name=x"], "-T") == {"n": 3, "latents": [1, 2], "name": "x"}
    with pytest.raises(ValueError, match="key=value"):
        parse_kv(["oops"], "-T")
