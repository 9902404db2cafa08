"""Bad input is refused early with a one-line error that names the fix; epochs are new trials;
read-outs never overlap a generating batch; versions and the command table stay consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPLIES, count_loads, keyed_grader, run
from inspect_ai import eval as inspect_eval

from esr_eval.errors import DataFileError, UsageError
from esr_eval.sampling.prompts import load_prompts

INSPECT = str(Path(sys.executable).parent / "inspect")


def test_misspelt_task_arg_is_refused_before_the_model_loads(tiny_model_dir, tiny_sae_dir, tmp_path, monkeypatch):
    loads = count_loads(monkeypatch)
    for task in ("esr_eval/steering_resistance", "esr_eval/no_steering", "esr_eval/boost_sweep"):
        with pytest.raises(UsageError, match="unknown task args for .*: n_latent; accepted are .*n_latents") as err:
            inspect_eval(task, model=f"steered/{tiny_model_dir}", task_args={"n_latent": 2}, log_dir=str(tmp_path), display="none")
        assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="level; accepted are .*levels.*span"):
        inspect_eval("esr_eval/boost_sweep", model=f"steered/{tiny_model_dir}", task_args={"level": 2}, log_dir=str(tmp_path), display="none")
    assert loads == []


def test_misspelt_model_arg_is_refused_before_the_model_loads(tiny_model_dir, tiny_sae_dir, tmp_path, monkeypatch):
    loads = count_loads(monkeypatch)
    with pytest.raises(UsageError, match="unknown model args .*: dictonary; accepted are .*dictionary"):
        inspect_eval(
            "esr_eval/steering_resistance",
            model=f"steered/{tiny_model_dir}",
            model_args={"dictonary": str(tiny_sae_dir)},
            log_dir=str(tmp_path),
            display="none",
        )
    with pytest.raises(UsageError, match="max_batch_size"):
        inspect_eval("esr_eval/steering_resistance", model=f"steered/{tiny_model_dir}", model_args={"max_batch_size": "lots"}, log_dir=str(tmp_path), display="none")
    assert loads == []


def test_the_command_line_prints_one_line_for_a_misspelt_arg(tmp_path):
    import os

    done = subprocess.run(
        [INSPECT, "eval", "esr_eval/steering_resistance", "-T", "n_latent=2", "--log-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={**os.environ, "INSPECT_DISPLAY": "plain"},
    )  # fmt: skip
    output = " ".join((done.stdout + done.stderr).split())  # the terminal wraps long lines
    assert "unknown task args for steering_resistance: n_latent; accepted are" in output
    assert "Traceback" not in output and done.returncode != 0


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.jsonl", '{"prompt": "One?"}\n{"prompt": "Two?"\n', r"p.jsonl line 2 is not a JSON object .*: give one prompt"),
        ("p.jsonl", '{"prompt": "One?"}\n{"question": ""}\n', r"p.jsonl line 2 has none of the fields prompt, text"),
        ("p.csv", "id,prompt\na,One?\nb,\n", r"p.csv line 3 has none of the fields"),
        ("p.txt", "# only a comment\n\n", r"p.txt holds no prompts"),
        ("p.json", '["One?"]', r"p.json is neither .txt, .jsonl nor .csv"),
        ("p.jsonl", '{"id": "a", "prompt": "One?"}\n{"id": "a", "prompt": "Two?"}\n', r"uses the prompt id 'a' twice"),
    ],
)
def test_prompt_file_errors_name_the_file_the_line_and_the_fix(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_prompts(path)


def test_prompt_formats_read_alike(tmp_path):
    (tmp_path / "p.txt").write_text("# comment\nFirst?\n\nSecond?\n")
    (tmp_path / "p.jsonl").write_text('{"id": "x", "prompt": "First?"}\n{"text": "Second?"}\n')
    (tmp_path / "p.csv").write_text("prompt\nFirst?\nSecond?\n")
    for name in ("p.txt", "p.jsonl", "p.csv"):
        assert [p.text for p in load_prompts(tmp_path / name)] == ["First?", "Second?"]
    assert [p.id for p in load_prompts(tmp_path / "p.jsonl")] == ["x", "1"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompts(tmp_path / "missing.txt")


def test_shipped_prompt_sets_load_by_name():
    from esr_eval.sampling.prompts import FACTUAL_PROMPTS, prompt_set_name

    factual = load_prompts("factual")
    assert len(factual) >= 40 and factual[0].text == "What are the main differences between mitosis and meiosis?"
    assert [p.text for p in factual] == [p.text for p in load_prompts(FACTUAL_PROMPTS)]  # the name and the path agree
    assert len({p.text.lower() for p in factual}) == len(factual)
    assert all(p.text.split()[0] in ("What", "Describe", "Compare") for p in factual)
    assert not {p.text for p in factual} & {p.text for p in load_prompts("explain_how")}
    assert prompt_set_name("factual") == "factual" and prompt_set_name(None) == "explain_how"
    with pytest.raises(UsageError, match="neither a file nor a shipped prompt set: .* explain_how, factual"):
        load_prompts("factuals")


def test_a_malformed_prompt_file_ends_an_eval_in_one_line(tiny_model_dir, tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "One?"}\nnot json\n')
    with pytest.raises(DataFileError, match=r"prompts.jsonl line 2 is not a JSON object"):
        inspect_eval("esr_eval/steering_resistance", model=f"steered/{tiny_model_dir}", task_args={"prompts": str(bad)}, log_dir=str(tmp_path), display="none")


def test_data_files_of_the_variants(tmp_path):
    from esr_eval.schema import DetectorsFile
    from esr_eval.tasks.adversarial import read_targets

    (tmp_path / "det.json").write_text('{"latents": [1, 2,]}')
    with pytest.raises(DataFileError, match=r"det.json line 1 is not valid JSON .*find-detectors"):
        DetectorsFile.read(tmp_path / "det.json")
    (tmp_path / "det.json").write_text('{"latents": ["a"]}')
    with pytest.raises(DataFileError, match="is not a detectors file"):
        DetectorsFile.read(tmp_path / "det.json")
    (tmp_path / "t.jsonl").write_text('{"id": "fr", "label": "French"}\n{"id": "ad"}\n')
    with pytest.raises(DataFileError, match=r"t.jsonl line 2 has no id or label"):
        read_targets(tmp_path / "t.jsonl")


def test_fine_tuning_data_keeps_out_the_evaluation_prompts_or_fails(monkeypatch, tmp_path):
    import esr_eval.training.finetune.data as data

    monkeypatch.setattr(data, "DEFAULT_PROMPTS", tmp_path / "moved.jsonl")
    with pytest.raises(FileNotFoundError, match="moved.jsonl does not exist"):
        data.training_prompts(None)  # never silently trains on a set it cannot check


def test_each_epoch_is_a_new_trial(tiny_model_dir, tiny_sae_dir, tmp_path):
    logs = inspect_eval(
        "esr_eval/steering_resistance",
        model=f"steered/{tiny_model_dir}",
        model_args={"dictionary": str(tiny_sae_dir)},
        model_roles={"grader": keyed_grader(REPLIES)},
        task_args={"max_tokens": 12, "threshold_cache": str(tmp_path / "t.jsonl"), "latents": [1, 2], "prompts_per_latent": 2},
        epochs=2,
        log_dir=str(tmp_path / "logs"),
        display="none",
    )
    log = logs[0]
    assert log.status == "success", log.error
    by_sample: dict = {}
    for s in log.samples:
        seeds = [e.config.seed for e in s.events if e.event == "model" and e.config.extra_body]
        by_sample.setdefault(s.id, []).append((s.epoch, seeds[-1], s.metadata["generation_seed"], s.output.completion))
    assert len(by_sample) == 4 and all(len(v) == 2 for v in by_sample.values())
    for (e1, seed1, g1, answer1), (e2, seed2, g2, answer2) in (sorted(v) for v in by_sample.values()):
        assert (e1, e2) == (1, 2) and seed1 == g1 and seed2 == g2 and seed1 != seed2
    assert sum(a[0][3] != a[1][3] for a in (sorted(v) for v in by_sample.values())) >= 3  # new answers


def test_read_outs_wait_for_a_generating_batch(tiny_model_dir, tiny_sae_dir, tmp_path):
    """Half the thresholds cached: those samples generate while the other latents' calibration
    reads residuals. Every logged steered answer equals the same request generated alone (float32:
    in bfloat16 a row's logits depend on the batch it shares)."""
    from helpers import write_thresholds

    from esr_eval.steering.engine import GenerationRequest
    from esr_eval.steering.intervention import steering_from_extra_body
    from esr_eval.steering.load import load_engine
    from esr_eval.steering.models import model_fingerprint

    lm = load_engine(str(tiny_model_dir), str(tiny_sae_dir), dtype="float32")
    cache = tmp_path / "thresholds.jsonl"
    write_thresholds(cache, model_fingerprint(str(tiny_model_dir)), lm.dictionary_id, {1: 3.0, 2: 5.0}, target=0.3, dtype="float32")
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    for row in rows:
        row["max_tokens"] = 32
    cache.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = run("esr_eval/steering_resistance", tiny_model_dir, tiny_sae_dir, tmp_path, keyed_grader(REPLIES), {"dtype": "float32"},
              latents=[1, 2, 3, 4], prompts_per_latent=3, max_tokens=32)  # fmt: skip
    assert {s.metadata["calibration_trials"] for s in log.samples if s.metadata["latent"] in (1, 2)} == {3}  # cached
    checked = 0
    for sample in log.samples:
        for event in (e for e in sample.events if e.event == "model" and e.config.extra_body):
            steering, dictionary = steering_from_extra_body(event.config.extra_body)
            request = GenerationRequest(
                [{"role": "user", "content": event.input[-1].text}], steering, event.config.max_tokens,
                event.config.temperature, seed=event.config.seed, dictionary=dictionary,
            )  # fmt: skip
            [alone] = lm.generate([request])
            assert event.output.completion == alone.text
            checked += 1
    assert checked >= len(log.samples)  # every trial, and the calibration answers logged with them


def test_eval_yaml_lists_every_task_with_its_version_and_sample_count():
    from inspect_ai._util.registry import registry_find

    import esr_eval._registry  # noqa: F401  (every task registered, whichever test modules ran first)
    from esr_eval.config import TaskArgs
    from esr_eval.tasks.task_setup import EVAL_YAML

    listing = yaml.safe_load(EVAL_YAML.read_text())
    assert listing["arxiv"] == "https://arxiv.org/abs/2602.06941" and listing["title"] and listing["description"]
    registered = sorted(info.name.split("/")[-1] for info in (getattr(t, "__registry_info__", None) for t in registry_find(lambda i: i.type == "task")) if info and info.name.startswith("esr_eval/"))
    assert sorted(t["name"] for t in listing["tasks"]) == registered
    default_trials = TaskArgs.n_latents * TaskArgs.prompts_per_latent
    counts = {t["name"]: t["dataset_samples"] for t in listing["tasks"]}
    assert counts["steering_resistance"] == counts["no_steering"] == default_trials
    assert counts["boost_sweep"] == 8 * default_trials and counts["meta_prompt"] == 4 * default_trials
    assert all(isinstance(t["version"], str) and t["version"] for t in listing["tasks"])


def test_eval_yaml_versions_changelog_and_assets():
    """Versions in the inspect_evals "N-X" form, a changelog entry for each, packaged assets that exist."""
    from pathlib import Path

    from esr_eval.tasks.task_setup import EVAL_YAML, VERSION_FORM, task_version

    listing = yaml.safe_load(EVAL_YAML.read_text())
    versions = {t["name"]: t["version"] for t in listing["tasks"]}
    assert all(VERSION_FORM.fullmatch(v) for v in [listing["version"], *versions.values()])
    assert listing["version"] == versions["steering_resistance"] == task_version("steering_resistance")
    logged = {(c["version"], name.strip()) for c in listing["changelog"] for name in c["tasks"].split(",")}
    for name, version in versions.items():
        assert (version, name) in logged or (version, "ESR tasks") in logged, f"no changelog entry for {name} {version}"
    assert listing["contributors"]
    root = Path(__file__).resolve().parents[2]  # the repository
    for asset in listing["external_assets"]:
        assert {"type", "source", "fetch_method", "state"} <= set(asset)
        if asset["type"] == "package":
            assert (root / asset["source"]).is_dir(), asset["source"]


def test_logs_carry_the_task_version(tiny_model_dir, tiny_sae_dir, tmp_path):
    from esr_eval.tasks.task_setup import task_version

    log = run("esr_eval/no_steering", tiny_model_dir, tiny_sae_dir, tmp_path, keyed_grader(REPLIES), latents=[1], prompts_per_latent=1)
    assert str(log.eval.task_version) == task_version("no_steering")


@pytest.mark.parametrize("argv", [["--help"], ["gate", "--help"], ["report", "--help"], ["agreement", "--help"]])
def test_help_imports_neither_torch_nor_lm_eval(argv):
    code = (
        "import sys; from esr_eval.cli import main\n"
        f"try: main({argv!r})\nexcept SystemExit: pass\n"
        "print([m for m in ('torch', 'lm_eval', 'transformers', 'inspect_ai') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stderr[-1000:]


def test_gate_and_report_work_without_torch(tmp_path):
    from helpers import esr_value, run_canned

    run_canned(tmp_path / "logs", [{"scores": {"judge": {"value": esr_value(30, 80)}}, "metadata": {"latent": 1}}])
    code = (
        "import sys; from esr_eval.cli import main\n"
        f"a = main(['gate', {str(tmp_path / 'logs')!r}, '--expect', 'n >= 1'])\n"
        f"b = main(['report', {str(tmp_path / 'logs')!r}, '--out', {str(tmp_path / 'report')!r}])\n"
        "print(a, b, [m for m in ('torch', 'lm_eval') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "0 0 []", done.stderr[-2000:]


def test_every_command_in_the_table_builds_its_parser():
    from esr_eval.cli import COMMANDS, build_parser

    for name in COMMANDS:
        parser = build_parser(name)
        sub = next(a for a in parser._actions if a.dest == "command")
        assert sub.choices[name].get_default("func") is not None, name
