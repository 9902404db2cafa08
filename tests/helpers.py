"""Helpers the tests share: the tiny random model's tokenizer and SAEs, canned Inspect runs,
a mockllm grader keyed by the rubric, and the task runner the end-to-end tests use."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.log import EvalLog
from inspect_ai.model import ModelOutput, ModelUsage, get_model
from inspect_ai.scorer import Score, scorer
from inspect_ai.solver import solver

from esr_eval.calibration.cache import prompt_set_hash
from esr_eval.calibration.rounds import METHOD
from esr_eval.config import TaskArgs
from esr_eval.judge.protocol import rubric_sections
from esr_eval.sampling.prompts import DEFAULT_PROMPTS as PROMPTS_FILE
from esr_eval.sampling.prompts import load_prompts
from esr_eval.schema import TrialValue
from esr_eval.steering.backends.hf import HFEngine

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).resolve().parent / "data"

# ------------------------------------------------------------------ the tiny model and its SAEs

TINY_LAYER = 2
TINY_HIDDEN = 32
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Explain how to brew coffee with a french press and hot water.",
    "How do you tie a tie? Wait, that's not right, let me try again.",
    "The cat sat on the mat while the dog ran in the park.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "To bake bread you mix flour, water, salt and yeast, then knead.",
    "Bicycles, oceans, volcanoes, music, football, painting and chess.",
]


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def write_random_sae(folder: Path, d_sae: int = 64, kind: str = "standard", seed: int = 0) -> Path:
    """A random sae-lens SAE hooked at the tiny model's layer 2, with labels for every latent."""
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    meta = SAEMetadata(hook_name=f"model.layers.{TINY_LAYER}", model_name="tiny-llama")
    if kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=TINY_HIDDEN, d_sae=d_sae, k=8, metadata=meta))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=TINY_HIDDEN, d_sae=d_sae, metadata=meta))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
        sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
        sae.b_enc.fill_(0.05)
    folder.mkdir(parents=True, exist_ok=True)
    sae.save_model(folder)
    topics = ["coffee", "the ocean", "volcanoes", "football", "jazz music", "chess", "bread", "bicycles"]
    labels = {str(k): f"{topics[k % len(topics)]} ({k})" for k in range(d_sae)}
    (folder / "labels.json").write_text(json.dumps(labels))
    return folder


def save_orthonormal(sae, folder: Path, seed: int) -> Path:
    """W_enc = W_dec^T with orthonormal rows and no biases, so a clamp can be read back at the
    layer; saved with a label per latent."""
    d_in, d_sae = sae.W_enc.shape
    q, _ = torch.linalg.qr(torch.randn(d_in, d_sae, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        sae.W_dec.copy_(q.T)
        sae.W_enc.copy_(q)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.save_model(folder)
    (folder / "labels.json").write_text(json.dumps({str(i): f"topic ({i})" for i in range(d_sae)}))
    return folder


def orthonormal_relu_sae(folder, d_sae: int = 16):
    """An SAE whose clamp is exact: W_enc = W_dec^T with orthonormal rows, no biases."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=d_sae, metadata=SAEMetadata(hook_name="model.layers.2")))
    return save_orthonormal(sae, folder, seed=3)


# ------------------------------------------------------------------ canned runs for the analysis tests


def esr_value(
    first: float, last: float | None = None, n_attempts: int | None = None, **extra: float
) -> dict[str, float]:
    """A Score.value as the attempts judge writes it (the trial record's own constructor)."""
    last = first if last is None else last
    n_attempts = (1 if last == first else 2) if n_attempts is None else n_attempts
    scores = [first] + [last] * (n_attempts - 1) if n_attempts else []
    if extra.get("judge_error"):
        return TrialValue.failed(bool(extra.get("degraded"))).to_value()
    value = TrialValue.from_scores(scores, [False] * len(scores), degraded=bool(extra.pop("degraded", 0)))
    return replace(value, **{k: float(v) for k, v in extra.items()}).to_value()


@solver
def canned_answer(fail: bool = False):
    async def solve(state, generate):
        if fail:
            raise RuntimeError("canned failure")
        state.output = ModelOutput.from_content("mockllm/model", state.metadata.get("answer", "An answer."))
        state.messages.append(state.output.message)
        return state

    return solve


def canned_judge(name: str, scores: dict[Any, dict[str, Any]]):
    """A scorer named `name` that returns the canned value (and attempts) of each sample id."""

    def factory():
        async def score(state, target):
            canned = scores[state.sample_id]
            return Score(
                value=canned["value"],
                explanation=" | ".join(a["text"] for a in canned.get("attempts", [])),
                metadata={
                    "grader": canned.get("grader", f"grader-{name}"),
                    "attempts": canned.get("attempts", []),
                    **{k: state.metadata[k] for k in ("latent", "boost") if k in state.metadata},
                },
            )

        return score

    return scorer(metrics=[], name=name)(factory)()


def run_canned(
    log_dir: Path,
    rows: list[dict[str, Any]],
    task: str = "steering_resistance",
    model: str = "mockllm/smollm2-135m",
    task_args: dict[str, Any] | None = None,
    fail: bool = False,
    task_metadata: dict[str, Any] | None = None,
) -> EvalLog:
    """rows: {"answer", "metadata", "scores": {scorer_name: {"value", "attempts", "grader"}}}."""
    samples = [
        Sample(
            id=i + 1,
            input=row.get("input", "Explain how bread is baked."),
            metadata={"answer": row.get("answer", "An answer."), **row.get("metadata", {})},
        )
        for i, row in enumerate(rows)
    ]
    names = list(rows[0]["scores"]) if rows else ["judge"]
    scorers = [canned_judge(n, {i + 1: row["scores"][n] for i, row in enumerate(rows)}) for n in names]
    t = Task(name=task, dataset=samples, solver=canned_answer(fail), scorer=scorers, metadata=task_metadata)
    log = eval(t, model=model, log_dir=str(log_dir), display="none")[0]
    if task_args:  # a Task object takes no -T args; record them as a registry task would
        from inspect_ai.log import read_eval_log, write_eval_log

        log = read_eval_log(log.location)
        log.eval.task_args = log.eval.task_args_passed = dict(task_args)
        write_eval_log(log, log.location)
    return log


# ------------------------------------------------------------------ the tasks end to end


USAGE = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)


def judge_reply(answer: str, attempts: list[tuple[float, bool]]) -> str:
    """Attempts that quote the answer being judged: attempt i is its i-th word onwards."""
    words = answer.split() or ["(empty)"]
    body = {
        "attempts": [
            {"text": " ".join(words[i % len(words) :]), "score": s, "serves_concept": c} for i, (s, c) in enumerate(attempts)
        ]
    }
    return f"<attempts>{json.dumps(body)}</attempts>"


def keyed_grader(by_latent: dict[int, list[tuple[float, bool]]], calls: list[str] | None = None):
    """A mockllm grader whose reply depends on the answer in the rubric (the attempts quote it)
    and on the latent named in its label "(k)" (the scores)."""

    def reply(input, tools, tool_choice, config):
        text = input[-1].text
        if calls is not None:
            calls.append(text)
        _, answer, label = rubric_sections(text)
        latent = int(re.findall(r"\((\d+)\)", label)[-1])
        out = ModelOutput.from_content("mockllm/model", judge_reply(answer, by_latent[latent]))
        out.usage = USAGE
        return out

    return get_model("mockllm/model", custom_outputs=reply)


def assert_each_answer_was_judged(log) -> None:
    """The judge saw each sample's own answer: its first attempt quotes that answer."""
    for sample in log.samples:
        attempts = sample.scores["attempts_judge"].metadata["attempts"]
        assert attempts[0]["text"] == " ".join(sample.output.completion.split()) or sample.output.completion.strip() == ""


def run(task: str, tiny_model_dir, tiny_sae_dir, tmp_path, grader, model_args: dict | None = None, **task_args):
    logs = eval(
        task,
        model=f"steered/{tiny_model_dir}",
        model_args={"dictionary": str(tiny_sae_dir), **(model_args or {})},
        model_roles={"grader": grader},
        task_args={"max_tokens": 8, "threshold_cache": str(tmp_path / "thresholds.jsonl"), **task_args},
        log_dir=str(tmp_path / "logs"),
        display="none",
    )
    assert logs[0].status == "success", logs[0].error
    return logs[0]


def metrics(log) -> dict[str, float]:
    return {name: m.value for s in log.results.scores for name, m in s.metrics.items()}


# latents 2 and 4 recover (20 -> 70), 1 and 3 answer once (40)
REPLIES = {1: [(40, False)], 2: [(20, True), (70, False)], 3: [(40, False)], 4: [(20, True), (70, False)]}


def count_loads(monkeypatch) -> list:
    loads: list = []
    real = HFEngine.load.__func__
    monkeypatch.setattr(HFEngine, "load", classmethod(lambda cls, *a, **k: loads.append(a) or real(cls, *a, **k)))
    return loads


def write_thresholds(path, model: str, dictionary: str, thresholds: dict[int, float], target: float, dtype: str) -> None:
    prompts = prompt_set_hash([p.text for p in load_prompts(PROMPTS_FILE)])
    rows = [
        dict(model=model, dictionary=dictionary, latent=k, grader="mockllm/model", target=target, prompts=prompts,
             max_tokens=8, temperature=0.6, top_p=1.0, repetition_penalty=1.1, calibration_trials=TaskArgs.calibration_trials,
             calibration=f"{METHOD}x{TaskArgs.calibration_rounds}", dtype=dtype, engine="hf",
             threshold=v, trials=3, score=target, history=[])  # fmt: skip
        for k, v in thresholds.items()
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
