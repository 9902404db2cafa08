"""Every bad input ends in one line naming the fix, before the model loads where the input alone
decides it; nothing given is silently dropped or coerced (issue 20, items 1-10)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from helpers import REPLIES, count_loads, keyed_grader
from inspect_ai import eval as inspect_eval

from esr_eval.cli import main
from esr_eval.errors import DataFileError, MissingFileError, UsageError

TASK = "esr_eval/steering_resistance"


def refuse(tmp_path, model: str | None, model_args: dict | None = None, task: str = TASK, **task_args):
    """Run a task that must be refused; the UsageError's one-line message."""
    with pytest.raises(UsageError) as err:
        inspect_eval(task, model=model, model_args=model_args or {}, task_args=task_args, log_dir=str(tmp_path / "logs"), display="none")
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.fixture
def tiny_default(monkeypatch, tiny_model_dir):
    """The tiny model stands in for the embedded default (no --model given)."""
    import esr_eval.tasks.task_setup as setup

    monkeypatch.setattr(setup, "DEFAULT_MODEL", f"steered/{tiny_model_dir}")


# 1 ------------------------------------------------------------------ -M without --model
@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"engine": "tpu"}, r"-M engine='tpu' is unknown: use one of hf, vllm"),
        ({"dtype": "float8"}, r"-M dtype='float8' is unknown"),
        ({"dtyp": "float32"}, r"unknown model args .*: dtyp; accepted are .*dtype"),
        ({"layer": 99}, r"-M layer=99 is outside .* \(layers 0..3\)"),
    ],
)
def test_model_args_without_a_model_are_checked_on_the_default(tiny_default, tiny_sae_dir, tmp_path, monkeypatch, given, message):
    loads = count_loads(monkeypatch)
    found = refuse(tmp_path, None, {"dictionary": str(tiny_sae_dir), **given})
    assert re.search(message, found), found
    assert loads == []


def test_model_args_without_a_model_reach_the_default_and_the_log(tiny_default, tiny_sae_dir, tmp_path):
    args = {"dictionary": str(tiny_sae_dir), "dtype": "float32"}
    [log] = inspect_eval(
        TASK, model_args=args, model_roles={"grader": keyed_grader(REPLIES)}, log_dir=str(tmp_path / "logs"), display="none",
        task_args={"latents": [1], "prompts_per_latent": 1, "max_tokens": 4, "threshold_cache": str(tmp_path / "t.jsonl")},
    )  # fmt: skip
    assert log.status == "success", log.error
    assert log.eval.model_args == args
    assert {s.metadata["latent"] for s in log.samples} == {1}


# 2 ------------------------------------------------------------------ NaN and degenerate sampling
def test_nan_and_degenerate_sampling_settings_are_refused(tiny_model_dir, tiny_sae_dir, tmp_path, monkeypatch):
    loads = count_loads(monkeypatch)
    model, sae = f"steered/{tiny_model_dir}", {"dictionary": str(tiny_sae_dir)}
    assert "-T temperature=nan is not a finite number" in refuse(tmp_path, model, sae, temperature=float("nan"))
    assert "-T top_p='inf' is not a finite number" in refuse(tmp_path, model, sae, top_p="inf")
    assert "-M repetition_penalty=0.0 must be above 0" in refuse(tmp_path, model, {**sae, "repetition_penalty": 0})
    assert loads == []


def test_generate_refuses_a_nan_boost_before_loading(tiny_model_dir, capsys, monkeypatch):
    loads = count_loads(monkeypatch)
    assert main(["generate", "Hi", "--model", str(tiny_model_dir), "--latent", "1", "--value", "nan"]) == 2
    assert "--value nan is not a finite number" in capsys.readouterr().err
    assert loads == []


# 3 ------------------------------------------------------------------ unwritable threshold cache
def test_an_unwritable_threshold_cache_is_refused_before_the_model_loads(tiny_model_dir, tiny_sae_dir, tmp_path, monkeypatch):
    loads = count_loads(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    model, sae = f"steered/{tiny_model_dir}", {"dictionary": str(tiny_sae_dir)}
    found = refuse(tmp_path, model, sae, threshold_cache=str(blocker / "t.jsonl"))
    assert found.startswith(f"threshold cache {blocker / 't.jsonl'} cannot be written ({blocker} is a file)") and "-T threshold_cache=FILE" in found
    monkeypatch.setenv("ESR_EVAL_CACHE", str(blocker / "cache"))
    assert "ESR_EVAL_CACHE" in refuse(tmp_path, model, sae)
    assert loads == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_folder_is_refused(tiny_model_dir, tiny_sae_dir, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    found = refuse(tmp_path, f"steered/{tiny_model_dir}", {"dictionary": str(tiny_sae_dir)}, threshold_cache=str(folder / "t.jsonl"))
    assert "cannot be written (permission denied)" in found


# 4 ------------------------------------------------------------------ unknown preset
def test_an_unknown_preset_lists_the_presets_and_the_other_forms(tmp_path):
    from esr_eval.steering.presets import check_model_source

    found = refuse(tmp_path, "steered/no-such-preset")
    assert found.startswith("model 'no-such-preset' is not a preset, a folder, a .gguf file or a hub id")
    assert "smollm2-135m, smollm2-135m-resist, gemma-3-270m" in found and "a model folder, a .gguf file, or a hub id ORG/NAME" in found
    with pytest.raises(MissingFileError, match=r"model .*missing.gguf does not exist"):
        check_model_source(str(tmp_path / "missing.gguf"))
    check_model_source("HuggingFaceTB/SmolLM2-135M-Instruct")  # a hub id is left to the hub


# 5 ------------------------------------------------------------------ no silent coercion
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"prompts_per_latent": 1.9}, "-T prompts_per_latent=1.9 is not an integer"),
        ({"max_tokens": 32.7}, "-T max_tokens=32.7 is not an integer"),
        ({"n_latents": True}, "-T n_latents=True is not an integer"),
        ({"latents": [1.5]}, "-T latents=[1.5] is not a list of integers"),
    ],
)
def test_task_values_are_never_truncated(tiny_model_dir, tiny_sae_dir, tmp_path, args, message):
    assert message in refuse(tmp_path, f"steered/{tiny_model_dir}", {"dictionary": str(tiny_sae_dir)}, **args)


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--max-tokens", "0"], "--max-tokens 0 must be at least 1"), (["--temperature", "-1"], "--temperature -1.0 must be a number >= 0")],
)
def test_generate_refuses_impossible_settings(tiny_model_dir, capsys, flags, message):
    assert main(["generate", "Hi", "--model", str(tiny_model_dir), *flags]) == 2
    assert message in capsys.readouterr().err


# 6 ------------------------------------------------------------------ one line, not a traceback
def test_a_prompt_file_that_is_not_utf8_is_named(tiny_model_dir, tiny_sae_dir, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("First prompt?\nCaf\xe9 prompt?\n".encode("latin-1"))
    with pytest.raises(DataFileError, match=r"latin1.txt line 2 is not UTF-8 text \(byte 0xe9\): save the file as UTF-8"):
        inspect_eval(TASK, model=f"steered/{tiny_model_dir}", model_args={"dictionary": str(tiny_sae_dir)},
                     task_args={"prompts": str(bad)}, log_dir=str(tmp_path), display="none")  # fmt: skip


def test_boost_sweep_levels_must_be_an_integer(tiny_model_dir, tiny_sae_dir, tmp_path):
    found = refuse(tmp_path, f"steered/{tiny_model_dir}", {"dictionary": str(tiny_sae_dir)}, task="esr_eval/boost_sweep", levels="abc")
    assert found.startswith("boost_sweep: -T levels='abc' must be an integer")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_and_a_missing_labels_file(tiny_model_dir, tiny_sae_dir, tmp_path, monkeypatch):
    loads = count_loads(monkeypatch)
    model = f"steered/{tiny_model_dir}"
    assert "device 'cuda' needs CUDA, but torch sees no CUDA device here: use -M device=cpu" in refuse(tmp_path, model, {"device": "cuda"})
    found = refuse(tmp_path, model, {"dictionary": str(tiny_sae_dir), "labels": str(tmp_path / "labels.json")})
    assert found == f"-M labels={tmp_path / 'labels.json'}: no such file; pass a JSON or CSV file of index -> label"
    assert loads == []


@pytest.mark.parametrize("command", [["gate", "--expect", "n >= 1"], ["report"], ["agreement"]])
def test_a_file_that_is_not_a_log_is_named(tmp_path, capsys, command):
    fake = tmp_path / "fake.eval"
    fake.write_text("not a zip")
    argv = [command[0], str(fake), *command[1:]]
    if command[0] == "report":
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{fake} is not a readable Inspect log" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# 7 ------------------------------------------------------------------ early checks
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"latents": [999999]}, "-T latents: latent 999999 is outside the dictionary (0..63)"),
        ({"latents": [-1]}, "-T latents: latent -1 is negative"),
        ({"latents": "1,1"}, "-T latents: latent 1 is given twice"),
        ({"n_latents": 100000}, "-T n_latents=100000 exceeds the dictionary's 64 latents"),
    ],
)
def test_latents_are_checked_against_the_dictionary_before_the_model_loads(tiny_model_dir, tiny_sae_dir, tmp_path, monkeypatch, args, message):
    loads = count_loads(monkeypatch)
    assert message in refuse(tmp_path, f"steered/{tiny_model_dir}", {"dictionary": str(tiny_sae_dir)}, **args)
    assert loads == []


def test_generate_refuses_a_negative_latent_before_loading(tiny_model_dir, capsys, monkeypatch):
    loads = count_loads(monkeypatch)
    assert main(["generate", "Hi", "--model", str(tiny_model_dir), "--latent", "-1"]) == 2
    assert "--latent: latent -1 is negative" in capsys.readouterr().err
    assert loads == []


def test_too_few_candidates_are_found_before_the_relevance_pass(monkeypatch):
    from types import SimpleNamespace

    import torch

    import esr_eval.sampling.latents as latents
    from esr_eval.steering.dictionary import DirectionSet

    def no_relevance_pass(*args, **kwargs):
        raise AssertionError("the relevance pass ran")

    monkeypatch.setattr(latents, "relevant_latents", no_relevance_pass)
    labelled_two = DirectionSet(torch.eye(8, 4), "eight", 2, {0: "coffee", 5: "chess"})
    with pytest.raises(UsageError, match=r"only 2 latents pass the label, firing and concreteness filters \(of the dictionary's 8\), 3 wanted"):
        latents.sample_latents(SimpleNamespace(dictionary=labelled_two), 3, [[{"role": "user", "content": "Hi"}]])


def test_a_prompt_that_leaves_no_room_for_the_answer_is_refused(tiny_model_dir, tiny_sae_dir, tmp_path):
    long = tmp_path / "long.txt"
    long.write_text("Explain how " + "coffee and bread " * 300 + "work?\n")
    found = refuse(tmp_path, f"steered/{tiny_model_dir}", {"dictionary": str(tiny_sae_dir), "dtype": "float32"},
                   prompts=str(long), latents=[1], prompts_per_latent=1, max_tokens=512, calibration_trials=1, calibration_rounds=1,
                   threshold_cache=str(tmp_path / "t.jsonl"))  # fmt: skip
    assert found.startswith("prompt 0 takes ") and "exceeds the model's context of 1024 tokens" in found


# 8 ------------------------------------------------------------------ exit during generation
def test_exiting_while_the_engine_generates_does_not_abort(tiny_model_dir, tiny_sae_dir, tmp_path):
    """Ctrl-C ends an eval while the engine's worker is inside a forward pass; the interpreter's
    exit must stop that thread, not abort (main: "terminate called ...", exit 134)."""
    script = tmp_path / "exit_mid.py"
    script.write_text(
        "import sys, time\n"
        "from esr_eval.steering.load import load_engine\n"
        "from esr_eval.steering.engine import GenerationRequest\n"
        f"lm = load_engine({str(tiny_model_dir)!r}, {str(tiny_sae_dir)!r}, dtype='float32')\n"
        "futures = [lm.submit(GenerationRequest([{'role': 'user', 'content': f'Explain how {i}'}], max_new_tokens=900, temperature=1.0, seed=i)) for i in range(400)]\n"
        "time.sleep(1.5)\n"
        "assert not all(f.done() for f in futures)\n"  # the worker is still generating (400 requests cannot drain in 1.5 s)
        "print('exiting', flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the abort needs torch's thread pool
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert "exiting" in done.stdout, done.stderr[-2000:]
    assert "terminate called" not in done.stderr and done.returncode == 0, done.stderr[-2000:]


# 9 ------------------------------------------------------------------ the vLLM fix text survives Inspect's display
def test_the_vllm_install_command_survives_rich_markup(monkeypatch):
    from rich.console import Console

    import esr_eval.steering.backends.vllm as vllm

    monkeypatch.setattr(vllm, "installed", lambda module: False)
    with pytest.raises(UsageError) as err:
        vllm.preflight(1, 1, None)
    console = Console(record=True, width=400)
    console.print(err.value.message)  # as Inspect prints a PrerequisiteError
    shown = console.export_text()
    assert 'pip install "esr-eval[vllm]"' in shown and 'pip install "esr-eval[vllm]"' in str(err.value)


# 10 ----------------------------------------------------------------- a misspelt gate metric
def test_a_misspelt_gate_metric_names_the_known_ones(tmp_path, capsys):
    from helpers import esr_value, run_canned

    run_canned(tmp_path / "logs", [{"scores": {"judge": {"value": esr_value(30, 80)}}, "metadata": {"latent": 1}}])
    assert main(["gate", str(tmp_path / "logs"), "--expect", "esr_rat <= 1"]) == 2
    err = capsys.readouterr().err
    assert "no metric is called 'esr_rat'; did you mean esr_rate? known are " in err and "multi_attempt_rate" in err
    assert main(["gate", str(tmp_path / "logs"), "--expect", "second_judge/esr_rate <= 1"]) == 4  # known, but missing


@pytest.mark.parametrize(
    ("command", "given", "message"),
    [
        (["calibrate"], "1,x", "--latents: '1,x': pass latent indices as comma-separated integers >= 0"),
        (["calibrate"], "3,-2", "--latents: '3,-2': pass latent indices as comma-separated integers >= 0"),
        (["make-finetune-data", "--steered", "--out", "rows.jsonl"], ",", "--latents: ',': pass latent indices"),
    ],
)
def test_latent_lists_that_are_not_indices_are_refused_by_the_parser(command, given, message, capsys, monkeypatch):
    loads = count_loads(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--latents", given])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert loads == []


@pytest.mark.parametrize(
    "command",
    [["generate", "Hi", "--latent", "64"], ["calibrate", "--latents", "3,64"], ["make-finetune-data", "--steered", "--latents", "64", "--out", "r.jsonl"]],
)
def test_commands_check_latents_against_the_dictionary_before_the_model_loads(command, tiny_model_dir, tiny_sae_dir, capsys, monkeypatch):
    loads = count_loads(monkeypatch)
    assert main([*command, "--model", str(tiny_model_dir), "--dictionary", str(tiny_sae_dir)]) == 2
    assert "latent 64 is outside the dictionary (0..63)" in capsys.readouterr().err
    assert loads == []
