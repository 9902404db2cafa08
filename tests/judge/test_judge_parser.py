"""The attempts-judge reply parser on well-formed and malformed grader replies."""

from __future__ import annotations

import pytest

from esr_eval.judge.protocol import (
    JudgeParseError,
    parse_attempts,
    parse_score,
    rubric_message,
    rubric_sections,
)

TWO = (
    '{"attempts": [{"text": "a", "score": 20, "serves_concept": true}, '
    '{"text": "b", "score": 90, "serves_concept": false}]}'
)


def summary(reply: str) -> list[tuple[str, float, bool]]:
    return [(a.text, a.score, a.serves_concept) for a in parse_attempts(reply).attempts]


EXPECTED_TWO = [("a", 20.0, True), ("b", 90.0, False)]


@pytest.mark.parametrize(
    "reply",
    [
        f"<attempts>{TWO}</attempts>",
        TWO,  # tags missing
        f"<attempts>\n```json\n{TWO}\n```\n</attempts>",  # code fence inside tags
        f"```json\n{TWO}\n```",  # code fence, no tags
        f"Here is my grading.\n<attempts>{TWO}</attempts>\nHope this helps!",  # text around
        f"Sure! {TWO} That's all.",  # text around, no tags
        f"<attempts>{TWO}",  # closing tag missing
        "<ATTEMPTS>" + TWO + "</ATTEMPTS>",  # tag case
        '<attempts>[{"text": "a", "score": 20, "serves_concept": true}, {"text": "b", "score": 90}]</attempts>',
        '<attempts>{"attempts": [{"text": "a", "score": "20", "serves_concept": "true"}, '
        '{"text": "b", "score": "90/100", "serves_concept": "false"}]}</attempts>',
    ],
)
def test_readable_shapes_give_the_same_attempts(reply: str) -> None:
    assert summary(reply) == EXPECTED_TWO


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(85, 85.0), (85.5, 85.5), ("85", 85.0), ("85/100", 85.0), ("8/10", 80.0), ("85%", 85.0), ("score: 85", 85.0)],
)
def test_score_strings(raw: object, expected: float) -> None:
    assert parse_score(raw) == expected


def test_out_of_range_scores_are_clipped_and_flagged() -> None:
    parsed = parse_attempts('{"attempts": [{"text": "a", "score": 140}, {"text": "b", "score": -5}]}')
    assert [a.score for a in parsed.attempts] == [100.0, 0.0]
    assert parsed.clipped is True
    assert parse_attempts(TWO).clipped is False


def test_missing_serves_concept_defaults_to_false() -> None:
    parsed = parse_attempts('<attempts>{"attempts": [{"text": "a", "score": 70}]}</attempts>')
    assert parsed.attempts[0].serves_concept is False


def test_empty_attempt_list_is_zero_attempts() -> None:
    assert parse_attempts('<attempts>{"attempts": []}</attempts>').attempts == []
    assert parse_attempts("<attempts>[]</attempts>").attempts == []


def test_prose_before_json_with_brackets_is_skipped() -> None:
    assert summary("[note] my reply: " + TWO) == EXPECTED_TWO


@pytest.mark.parametrize(
    "reply",
    [
        '[1, 2] and {"score": 3} come first, then ' + TWO,  # stray JSON before the attempts object
        '<attempts>{"note": [], "grading": ' + TWO + "}</attempts>",  # nested in a wrapper object
        "```js\nvar wrapper = [];\n```\n" + TWO,  # junk code, then the object
        '<attempts>[]</attempts> was my draft. <attempts>' + TWO + "</attempts>",  # the first tagged block wins
    ],
)
def test_the_attempts_object_is_found_past_other_json(reply: str) -> None:
    expected = [] if reply.startswith("<attempts>[]") else EXPECTED_TWO
    assert summary(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "I cannot grade this answer.",
        "<attempts>not json</attempts>",
        '<attempts>{"result": "fine"}</attempts>',  # object without attempts
        '<attempts>{"attempts": "two"}</attempts>',  # attempts not a list
        '<attempts>{"attempts": [{"text": "a"}]}</attempts>',  # no score
        '<attempts>{"attempts": [{"text": "a", "score": "high"}]}</attempts>',  # unreadable score
        '<attempts>{"attempts": ["a", "b"]}</attempts>',  # attempts not objects
        '<attempts>{"attempts": [{"text": "a", "score": true}]}</attempts>',
        '<attempts>{"text": "only", "score": 55}</attempts>',  # one attempt without the wrapper
        # junk a real grader wrote (a stray empty array must not read as zero attempts)
        "```javascript\nfunction render() {\n  var wrapper = [];\n  return wrapper;\n}\n```",
        "[]",  # a bare list outside the tags
        "The attempts are [] as far as I can tell.",
        '[{"text": "a", "score": 20}]',  # an untagged list of attempts
        '<attempts>[{"text": "a", "score": 20}] and more text</attempts>',  # a list that is not the whole body
        '<attempts>[1, 2]</attempts>',  # a tagged list of non-attempts
        '<attempts>[[{"text": "a", "score": 20}]]</attempts>',  # nested lists
        '{"data": [[], {"values": []}], "attempts_count": 0}',  # nested junk, no attempts key
        '<attempts>{"attempts": [{"text": "a", "score": 20}',  # cut off mid-object (a capped reply)
        "<attempts>" + "x" * 5000,  # a reply that never ended, capped
    ],
)
def test_unusable_replies_raise(reply: str) -> None:
    with pytest.raises(JudgeParseError):
        parse_attempts(reply)


def test_rubric_sections_round_trip_even_with_tags_in_the_answer() -> None:
    answer = "Step 1: boil.\n</answer> is a tag I mention.\nWait, let me try again."
    message = rubric_message("Explain how to brew tea.", answer, "volcanoes")
    assert rubric_sections(message) == ("Explain how to brew tea.", answer, "volcanoes")
    assert rubric_sections("no sections here") is None
