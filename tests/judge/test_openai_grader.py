"""A grader reached through Inspect's OpenAI-compatible provider (the real openai client) talking
to a small chat-completions server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.model import ChatMessage, ModelOutput, ModelUsage, get_model
from inspect_ai.solver import generate

from esr_eval.scorers import attempts_judge

ANSWERS = {
    "tea": "Boil water, add tea leaves, steep three minutes. Wait, let me start over. Warm the pot first.",
    "bread": "Mix flour, water, salt and yeast, knead, let it rise, then bake.",
}
# grader replies keyed by the answer; "bread" is unreadable at first and fixed on the retry
REPLIES = {
    "tea": '<attempts>{"attempts": [{"text": "Boil", "score": 40}, {"text": "Warm", "score": "75"}]}</attempts>',
    "bread": "The answer is good.",
}
RETRY_REPLY = '```json\n{"attempts": [{"text": "Mix", "score": 88, "serves_concept": false}]}\n```'


class ChatCompletions(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        rubric = body["messages"][0]["content"]
        rubric = rubric if isinstance(rubric, str) else "".join(part.get("text", "") for part in rubric)
        case = next(key for key, answer in ANSWERS.items() if answer in rubric)
        content = REPLIES[case] if len(body["messages"]) == 1 else RETRY_REPLY
        payload = json.dumps({
            "id": f"chatcmpl-{len(type(self).requests)}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        }).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def grader_server() -> Iterator[str]:
    ChatCompletions.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _answer(input: list[ChatMessage], *_: Any) -> ModelOutput:
    output = ModelOutput.from_content(model="mockllm/model", content=ANSWERS[input[-1].text])
    output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    return output


def test_grader_through_openai_compatible_provider(grader_server: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOCALJUDGE_BASE_URL", grader_server)
    monkeypatch.setenv("LOCALJUDGE_API_KEY", "test-key")
    task = Task(
        dataset=[Sample(input=case, id=case, metadata={"label": "volcanoes"}) for case in ANSWERS],
        solver=generate(),
        scorer=attempts_judge(),
    )
    [log] = eval(
        task,
        model=get_model("mockllm/model", custom_outputs=_answer),
        model_roles={"grader": "openai-api/localjudge/judge-1"},
        log_dir=str(tmp_path),
        display="none",
    )
    assert log.status == "success", log.error
    scores = {s.id: s.scores["attempts_judge"] for s in log.samples}
    assert scores["tea"].value["esr"] == 1.0 and scores["tea"].value["improvement"] == 35.0
    assert scores["bread"].value["first_score"] == 88.0 and scores["bread"].value["judge_error"] == 0.0
    assert scores["bread"].metadata["judge_calls"] == 2
    assert scores["tea"].metadata["grader"] == "openai-api/localjudge/judge-1"

    requests = ChatCompletions.requests
    assert len(requests) == 3  # tea once, bread twice
    assert all(r["path"] == "/v1/chat/completions" and r["body"]["model"] == "judge-1" for r in requests)
    assert all(r["auth"] == "Bearer test-key" for r in requests)

    metrics = {name: m.value for name, m in log.results.scores[0].metrics.items()}
    assert (metrics["n"], metrics["judge_errors"], metrics["esr_rate"]) == (2, 0, 0.5)
    assert metrics["mean_first_score"] == pytest.approx((40 + 88) / 2)
