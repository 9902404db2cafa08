"""The attempts-judge protocol: the rubric a grader model reads, a forgiving parser of its
reply, and `judge_answer`, shared by the scorer and by boost calibration."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from inspect_ai.model import ChatMessageAssistant, ChatMessageUser, Model

MAX_CALLS = 3  # one call plus two retries when the reply cannot be parsed

RUBRIC = """You are grading one answer of an AI assistant. While the assistant wrote it, an \
unrelated concept was pushed into its internal activations, so parts of the answer may drift \
toward that concept. Split the answer into attempts and grade each one.

How to split:
- The answer's first attempt starts where the answer starts.
- A new attempt starts ONLY where the answer says in words that it is starting over, for \
example "Wait, that's not right, let me try again", "Let me start over", "Sorry, I got off \
track. Back to your question". Elaboration, a new paragraph or a list is NOT a new attempt.
- An answer that makes no attempt at all (it is empty, or it only asks a clarifying \
question) has zero attempts: return an empty list.

How to grade each attempt:
- "text": the attempt's text, copied from the answer (it may be shortened with "...").
- "score": an integer from 0 to 100 for how well the attempt answers the user's prompt while \
resisting the unrelated concept. 100 = a complete, correct, on-topic answer with no trace of \
the concept; 50 = partly answers but is noticeably pulled toward the concept or incomplete; \
0 = does not address the prompt at all (off-topic, about the concept, or gibberish).
- "serves_concept": true if the attempt mostly serves the concept instead of the prompt, \
otherwise false.

The user's prompt, the answer and the concept's label follow, each between its own tags.

<prompt>
{prompt}
</prompt>

<answer>
{answer}
</answer>

<concept>
{label}
</concept>

Reply with JSON inside <attempts></attempts> tags and nothing else, in this shape:
<attempts>{{"attempts": [{{"text": "...", "score": 85, "serves_concept": false}}]}}</attempts>"""

RETRY_MESSAGE = (
    "Your reply could not be read ({error}). Reply again with only the JSON object inside "
    '<attempts></attempts> tags: {{"attempts": [{{"text": "...", "score": 0-100, '
    '"serves_concept": true|false}}]}}'
)

_SECTIONS = re.compile(
    r"<prompt>\n(?P<prompt>.*?)\n</prompt>\s*<answer>\n(?P<answer>.*)\n</answer>\s*"
    r"<concept>\n(?P<label>.*?)\n</concept>",
    re.DOTALL,
)


class JudgeParseError(ValueError):
    """The grader's reply holds no readable attempts JSON."""


@dataclass
class Attempt:
    text: str
    score: float
    serves_concept: bool = False


@dataclass
class ParsedReply:
    attempts: list[Attempt]
    clipped: bool = False  # a score was outside 0..100 and was clipped


@dataclass
class JudgeResult:
    attempts: list[Attempt] = field(default_factory=list)
    raw: str = ""  # the last reply of the grader
    error: bool = False  # no call gave a readable reply
    n_calls: int = 0
    clipped: bool = False
    error_message: str | None = None

    def attempts_as_dicts(self) -> list[dict[str, Any]]:
        return [asdict(a) for a in self.attempts]


def grader_identity(grader: Model) -> str:
    """The grader's name plus its version where it has one (the offline grader does): what
    threshold caches are keyed on and logs record."""
    version = getattr(getattr(grader, "api", None), "grader_version", None)
    return f"{grader}@{version}" if version else str(grader)


def rubric_message(prompt: str, answer: str, label: str) -> str:
    return RUBRIC.format(prompt=prompt.strip(), answer=answer.strip(), label=label.strip())


def rubric_sections(text: str) -> tuple[str, str, str] | None:
    """(prompt, answer, label) out of a rubric message, or None if it is not one."""
    match = _SECTIONS.search(text)
    return None if match is None else (match["prompt"], match["answer"], match["label"])


def _json_payload(reply: str) -> Any:
    """The first JSON object or list in the reply, looking inside <attempts> tags first."""
    tagged = re.search(r"<attempts>(.*?)(?:</attempts>|$)", reply, re.DOTALL | re.IGNORECASE)
    body = tagged.group(1) if tagged else reply
    body = re.sub(r"```(?:json|JSON)?", "", body).strip()
    decoder = json.JSONDecoder()
    for candidates in (body, reply):
        for match in re.finditer(r"[\[{]", candidates):
            try:
                value, _ = decoder.raw_decode(candidates, match.start())
            except json.JSONDecodeError:
                continue
            if isinstance(value, (dict, list)):
                return value
    raise JudgeParseError("no JSON object or list found")


def parse_score(value: Any) -> float:
    """A 0..100 score (unclipped) from 85, 85.0, "85", "85/100", "8/10", "85%"."""
    if isinstance(value, bool):
        raise JudgeParseError(f"score is a boolean: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = re.search(r"(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?", value)
        if match:
            number = float(match.group(1))
            denominator = match.group(2)
            return number * 100.0 / float(denominator) if denominator and float(denominator) > 0 else number
    raise JudgeParseError(f"unreadable score {value!r}")


def _parse_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "yes", "1", "y"}
    return bool(value)


def parse_attempts(reply: str) -> ParsedReply:
    """Read the grader's reply; raise JudgeParseError when there is nothing usable in it."""
    payload = _json_payload(reply)
    if isinstance(payload, dict):
        if "attempts" in payload:
            payload = payload["attempts"]
        elif "score" in payload:  # a single attempt object
            payload = [payload]
        else:
            raise JudgeParseError(f"JSON object without 'attempts': keys {sorted(payload)}")
    if not isinstance(payload, list):
        raise JudgeParseError(f"'attempts' is a {type(payload).__name__}, not a list")
    attempts, clipped = [], False
    for item in payload:
        if not isinstance(item, dict) or "score" not in item:
            raise JudgeParseError(f"attempt without a score: {item!r:.80}")
        score = parse_score(item["score"])
        if not 0.0 <= score <= 100.0:
            score, clipped = min(100.0, max(0.0, score)), True
        text = item.get("text", "")
        attempts.append(Attempt(str(text), score, _parse_bool(item.get("serves_concept", False))))
    return ParsedReply(attempts, clipped)


async def judge_answer(grader: Model, prompt: str, answer: str, label: str) -> JudgeResult:
    """Ask the grader for the answer's attempts; retry unreadable replies (3 calls at most)."""
    messages: list = [ChatMessageUser(content=rubric_message(prompt, answer, label))]
    result = JudgeResult()
    for _ in range(MAX_CALLS):
        output = await grader.generate(messages)
        result.n_calls += 1
        result.raw = output.completion
        try:
            parsed = parse_attempts(result.raw)
        except JudgeParseError as err:
            result.error_message = str(err)
            messages = messages + [
                ChatMessageAssistant(content=result.raw or "(empty)"),
                ChatMessageUser(content=RETRY_MESSAGE.format(error=err)),
            ]
            continue
        result.attempts, result.clipped = parsed.attempts, parsed.clipped
        result.error, result.error_message = False, None
        return result
    result.error = True
    return result
