"""A real-looking judge server must not break a run.

A small chat-completions server on 127.0.0.1 (started by the test, stopped after it, with a
bounded request count) replays what a small chat model served by vLLM does: it refuses any
request whose prompt plus completion budget exceeds its context (vLLM's 400 "maximum context
length"), writes until the budget is spent when a reply never ends, answers HTTP 500, or writes
junk code. The grader is reached the way a user reaches a local server:
`openai-api/<service>/<model>` with `<SERVICE>_BASE_URL` and `<SERVICE>_API_KEY`, so a real
server (vLLM's CPU build) can take the fixture's place with the same recipe.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from inspect_ai import eval as inspect_eval
from inspect_ai.model import GenerateConfig, get_model

from esr_eval.config import GRADER_MAX_TOKENS

CONTEXT_TOKENS = 2048  # the served model's context (vLLM --max-model-len)
MAX_REQUESTS = 400  # the server refuses more: a runaway retry loop fails the test instead of hanging
CHARS_PER_TOKEN = 4
GOOD = '<attempts>{"attempts": [{"text": "the answer", "score": 30, "serves_concept": false}]}</attempts>'
JUNK_CODE = "```javascript\nfunction render(items) {\n  var wrapper = [];\n  items.forEach(i => wrapper.push(i));\n  return wrapper;\n}\n```"
RUNAWAY = "The answer drifts and the grader keeps writing about it without end. "
# mode of each latent of the tiny SAE (its labels end in "(k)")
MODES = {1: "good", 2: "over_length", 3: "http_500", 4: "junk_code", 5: "runaway", 6: "junk_then_good"}


def _vllm_error(status: int, message: str, kind: str) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": kind, "param": None, "code": status}


class JudgeServer(BaseHTTPRequestHandler):
    """Chat completions with vLLM's limits and faults, keyed by the latent in the rubric's label."""

    log: list[dict[str, Any]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        messages = body["messages"]
        text = "".join(m["content"] if isinstance(m["content"], str) else "".join(p.get("text", "") for p in m["content"])
                       for m in messages)
        prompt_tokens = len(text) // CHARS_PER_TOKEN
        budget = body.get("max_tokens") or body.get("max_completion_tokens")
        label = re.search(r"<concept>\n(.*?)\n</concept>", text, re.DOTALL)
        latent = int(re.findall(r"\((\d+)\)", label.group(1))[-1]) if label else 0
        mode = MODES.get(latent, "good")
        with self.lock:
            n = len(self.log)
            self.log.append({"latent": latent, "mode": mode, "calls": len(messages), "prompt_tokens": prompt_tokens,
                             "max_tokens": budget, "status": 200})
        if n >= MAX_REQUESTS:
            return self._send(503, _vllm_error(503, "test server: too many requests", "ServiceUnavailable"))
        if prompt_tokens + (budget or 0) > CONTEXT_TOKENS or mode == "over_length":
            asked = prompt_tokens + (budget or 0) if mode != "over_length" else CONTEXT_TOKENS + 263
            return self._send(400, _vllm_error(400, (
                f"This model's maximum context length is {CONTEXT_TOKENS} tokens. However, you requested {asked} "
                f"tokens ({asked - (budget or 0)} in the messages, {budget or 0} in the completion). Please reduce "
                "the length of the messages or completion."), "BadRequestError"))
        if mode == "http_500":
            return self._send(500, _vllm_error(500, "Internal Server Error", "InternalServerError"))
        room = CONTEXT_TOKENS - prompt_tokens if budget is None else budget
        if mode == "runaway":
            content, finish = (RUNAWAY * (room * CHARS_PER_TOKEN // len(RUNAWAY) + 1))[: room * CHARS_PER_TOKEN], "length"
        elif mode == "junk_code" or (mode == "junk_then_good" and len(messages) == 1):
            content, finish = JUNK_CODE, "stop"
        else:
            content, finish = GOOD, "stop"
        self._send(200, {
            "id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content) // CHARS_PER_TOKEN,
                      "total_tokens": prompt_tokens + len(content) // CHARS_PER_TOKEN},
        })

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        if status != 200:
            with self.lock:
                self.log[-1]["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def judge_server() -> Iterator[str]:
    JudgeServer.log = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), JudgeServer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_faulty_judge_server_gives_counted_judge_errors_and_a_finished_eval(
    judge_server, tiny_model_dir, tiny_sae_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("LOCALJUDGE_BASE_URL", judge_server)
    monkeypatch.setenv("LOCALJUDGE_API_KEY", "local")
    [log] = inspect_eval(
        "esr_eval/steering_resistance",
        model=f"steered/{tiny_model_dir}",
        model_args={"dictionary": str(tiny_sae_dir)},
        model_roles={"grader": get_model("openai-api/localjudge/judge", config=GenerateConfig(temperature=0))},
        task_args={"latents": list(MODES), "prompts_per_latent": 1, "calibration_trials": 2, "max_tokens": 8,
                   "threshold_cache": str(tmp_path / "thresholds.jsonl")},
        max_retries=1,  # Inspect retries a 500 once, then the judge records the error
        log_dir=str(tmp_path / "logs"),
        display="none",
    )
    assert log.status == "success", log.error
    assert len(log.samples) == 6 and not any(s.error for s in log.samples)
    by_latent: dict[int, list] = {}
    for sample in log.samples:
        by_latent.setdefault(sample.metadata["latent"], []).append(sample)
    for latent, mode in MODES.items():
        for sample in by_latent[latent]:
            value, md = sample.scores["attempts_judge"].value, sample.scores["attempts_judge"].metadata
            failing = mode not in ("good", "junk_then_good")
            assert value["judge_error"] == float(failing), (mode, md)
            assert sample.metadata["calibration_judge_errors"] == (2 if failing else 0), mode
            if not failing:
                assert value["first_score"] == 30.0 and value["n_attempts"] == 1.0
                assert md["judge_calls"] == (2 if mode == "junk_then_good" else 1)
            elif mode == "over_length":
                assert md["judge_calls"] == 1, md
                assert "400" in md["judge_error_message"] and "maximum context length" in md["judge_error_message"], md
            elif mode == "http_500":
                assert md["judge_calls"] == 1 and "InternalServerError 500" in md["judge_error_message"], md
            else:
                assert md["judge_calls"] == 3 and "attempts" in md["judge_error_message"], md
    metrics = {name: m.value for s in log.results.scores for name, m in s.metrics.items()}
    assert metrics["n"] == 6 and metrics["judge_errors"] == 4
    assert metrics["mean_first_score"] == pytest.approx(30.0)

    requests = JudgeServer.log
    assert all(r["max_tokens"] == GRADER_MAX_TOKENS for r in requests)  # every call capped
    # retries stay inside the context: only the latent whose server always refuses got a 400
    assert {r["latent"] for r in requests if r["status"] == 400} == {2}
    runaway = [r for r in requests if r["mode"] == "runaway"]
    assert len(runaway) == 3 * (2 + 1)  # 2 calibration trials + 1 sample, 3 calls each
    assert max(r["prompt_tokens"] for r in runaway) < 2 * min(r["prompt_tokens"] for r in runaway)
    # each of the 3 judgings tried twice (Inspect's one retry), each try with the openai client's own retries
    assert 2 * 3 <= len([r for r in requests if r["mode"] == "http_500"]) <= 6 * 3
    # a threshold that no trial measured is not cached; the measured ones are
    cached = [json.loads(line)["latent"] for line in (tmp_path / "thresholds.jsonl").read_text().splitlines()]
    assert sorted(cached) == [1, 6]


def test_grader_role_max_tokens_overrides_the_default_cap(judge_server, monkeypatch):
    import asyncio

    from esr_eval.judge.protocol import grader_max_tokens, judge_answer

    monkeypatch.setenv("LOCALJUDGE_BASE_URL", judge_server)
    monkeypatch.setenv("LOCALJUDGE_API_KEY", "local")
    assert grader_max_tokens(get_model("mockllm/model")) == GRADER_MAX_TOKENS
    grader = get_model("openai-api/localjudge/judge", config=GenerateConfig(max_tokens=300))
    assert grader_max_tokens(grader) == 300
    result = asyncio.run(judge_answer(grader, "Explain tea.", "Boil water.", "volcanoes (5)"))
    assert result.error and result.n_calls == 3  # a runaway reply, capped each time
    assert [r["max_tokens"] for r in JudgeServer.log] == [300, 300, 300]
    assert all(r["status"] == 200 for r in JudgeServer.log)
