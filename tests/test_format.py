"""Tests of the CodeAct format: render/parse round trips (property-based), parsing that never
raises, every malformed turn returned as data, conversations and observations."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from score_distill.agent.format import (CODE_CLOSE, CODE_OPEN, NO_OUTPUT, OBSERVATION_PREFIX, PLAN_CLOSE, PLAN_OPEN,
                                        PLAN_OBSERVATION, SYSTEM_PROMPT, THOUGHT_CLOSE, THOUGHT_OPEN, ParsedTurn,
                                        calls_final_answer, format_observation, next_kind, parse_turn, render_observation,
                                        render_step, to_messages)
from score_distill.types import Step

TAGS = (PLAN_OPEN, PLAN_CLOSE, THOUGHT_OPEN, THOUGHT_CLOSE, CODE_OPEN, CODE_CLOSE)


def _tag_free(text: str) -> bool:
    return not any(tag in text for tag in TAGS)


def _normalised_code(code: str) -> str:
    """What the parser promises to give back: trailing spaces gone, blank lines around the
    code gone, everything else (indentation, inner blank lines) kept. Written here from the
    spec, independently of the parser's own helper."""
    lines = [line.rstrip() for line in code.split("\n")]
    start = next((i for i, line in enumerate(lines) if line), len(lines))
    end = max((i + 1 for i, line in enumerate(lines) if line), default=start)
    return "\n".join(lines[start:end])


tag_free_text = st.text().filter(_tag_free)
thought_text = tag_free_text.filter(lambda t: t.strip() != "")
code_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1).filter(
    lambda c: _tag_free(c) and _normalised_code(c) != "")
python_like_code = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(["x = 1", "print(x)", "if x:", "for i in range(3):", "", "  # c"])),
    min_size=1, max_size=8).map(lambda rows: "\n".join("    " * depth + line for depth, line in rows))


# --- round trips ---------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(tag_free_text.filter(lambda t: t.strip() != ""))
def test_plan_round_trip(thought: str) -> None:
    parsed = parse_turn(render_step(Step(kind="plan", thought=thought)), "plan")
    assert parsed == ParsedTurn("plan", thought.strip(), "", None)


@settings(max_examples=300, deadline=None)
@given(thought_text, code_text | python_like_code.filter(lambda c: _normalised_code(c) != ""))
def test_action_round_trip(thought: str, code: str) -> None:
    parsed = parse_turn(render_step(Step(kind="action", thought=thought, code=code)), "action")
    assert parsed == ParsedTurn("action", thought.strip(), _normalised_code(code), None)


@settings(max_examples=200, deadline=None)
@given(thought_text, code_text)
def test_parsing_a_well_formed_turn_is_a_fixed_point(thought: str, code: str) -> None:
    once = parse_turn(render_step(Step(kind="action", thought=thought, code=code)), "action")
    twice = parse_turn(render_step(Step(kind="action", thought=once.thought, code=once.code)), "action")
    assert twice == once


def test_raw_text_renders_as_written() -> None:
    raw = "<thought>x</thought><code>broken"
    assert render_step(Step(kind="action", thought="x", code="broken", raw=raw, parse_error="unclosed")) == raw


def test_indentation_and_inner_blank_lines_survive() -> None:
    code = "\n\n  def f(x):   \n\n      return x\nprint(f(2))  \n\n"
    parsed = parse_turn(render_step(Step(kind="action", thought="t", code=code)), "action")
    assert parsed.code == "  def f(x):\n\n      return x\nprint(f(2))"
    assert parsed.error is None


# --- never raises --------------------------------------------------------------------------

fragments = st.sampled_from(list(TAGS) + ["<", ">", "/", "thought", "code", "first_", "\n", " ", "x = 1",
                                          "print(1)", "final_answer(3)", "</", "<code", "code>"])
tag_soup = st.lists(fragments, max_size=25).map("".join)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), tag_soup), st.sampled_from(["plan", "action"]))
@example("<thought></thought><code><code></code>", "action")  # once accepted, with code "<code>"
@example("<thought>a<code>x</code></thought><code>y</code>", "action")
@example("<first_thought><first_thought>p</first_thought>", "plan")
def test_parsing_never_raises_and_reports_problems_as_data(text: str, kind: str) -> None:
    parsed = parse_turn(text, kind)
    assert isinstance(parsed, ParsedTurn) and parsed.kind == kind
    assert parsed.error is None or (isinstance(parsed.error, str) and parsed.error)
    if parsed.error is None:
        # A turn accepted as well formed has exactly one non-empty span of each of its tags,
        # and no tag inside any span.
        assert _tag_free(parsed.thought) and _tag_free(parsed.code) and parsed.thought.strip()
        if kind == "plan":
            assert parsed.code == ""
            assert text.count(PLAN_OPEN) >= 1
        else:
            assert parsed.code.strip()
            assert all(text.count(tag) == 1 for tag in (CODE_OPEN, CODE_CLOSE, THOUGHT_OPEN, THOUGHT_CLOSE))
            assert text.rstrip().endswith(CODE_CLOSE)
    # whatever was parsed, rendering it and parsing again never raises either
    again = parse_turn(render_step(Step(kind=kind, thought=parsed.thought, code=parsed.code)), kind)
    assert isinstance(again, ParsedTurn)


def test_unknown_kind_is_our_bug() -> None:
    with pytest.raises(ValueError, match="kind"):
        parse_turn("<thought>x</thought>", "reflection")


# --- malformed turns, one case each ---------------------------------------------------------

@pytest.mark.parametrize("text,kind,error,thought,code", [
    ("just some words", "plan", "no plan", "just some words", ""),
    ("<first_thought>look it up", "plan", "unclosed <first_thought>", "look it up", ""),
    ("<first_thought>a</first_thought><first_thought>b</first_thought>", "plan", "several plans", "a", ""),
    ("<first_thought>   </first_thought>", "plan", "empty plan", "", ""),
    ("print(1)", "action", "no <code> block", "", ""),
    ("<thought>t</thought>", "action", "no <code> block", "t", ""),
    ("<thought>t</thought>\n<code>\nx = 1\nprint(x", "action", "unclosed <code>", "t", "x = 1\nprint(x"),
    ("<thought>t</thought><code>x = 1</code> and then I will", "action", "text after </code>", "t", "x = 1"),
    ("<thought>t</thought><code>a</code><code>b</code>", "action", "several <code> blocks", "t", "a"),
    ("<thought>t</thought><code>\n  \n</code>", "action", "empty <code> block", "t", ""),
    ("<code>x = 1</code>", "action", "no <thought>", "", "x = 1"),
    ("<thought>unclosed thought <code>x = 1</code>", "action", "no <thought>", "", "x = 1"),
    ("<thought></thought><code><code></code>", "action", "a <code> tag inside the code", "", "<code>"),
    ("<thought> </thought><code>x = 1</code>", "action", "empty <thought>", "", "x = 1"),
    ("<thought>a</thought><thought>b</thought><code>x</code>", "action", "several <thought>", "a", "x"),
    ("<thought>a<code>x</code></thought><code>y</code>", "action", "several <code> blocks", "a<code>x</code>", "x"),
    ("<thought>a <first_thought></thought><code>x</code>", "action", "a <first_thought> tag inside the thought",
     "a <first_thought>", "x"),
    ("<first_thought>p <code>x</code></first_thought>", "plan", "a <code> tag inside the plan", "p <code>x</code>", ""),
])
def test_each_malformed_turn_is_returned_with_an_error(text: str, kind: str, error: str, thought: str,
                                                       code: str) -> None:
    parsed = parse_turn(text, kind)
    assert parsed.error is not None and error in parsed.error
    assert (parsed.thought, parsed.code) == (thought, code)


def test_stop_string_cut_turn_still_parses() -> None:
    # Generation stops at </code>: the turn ends right there, which is well formed.
    parsed = parse_turn("<thought>add</thought>\n<code>\nprint(1 + 1)\n</code>", "action")
    assert parsed.error is None and parsed.code == "print(1 + 1)"


def test_plan_text_around_the_tags_is_ignored_and_action_text_before_thought_is_ignored() -> None:
    assert parse_turn("Sure! <first_thought>p</first_thought>", "plan") == ParsedTurn("plan", "p", "", None)
    assert parse_turn("Okay.\n<thought>t</thought><code>x</code>", "action").error is None


# --- conversations and observations ---------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(st.lists(st.builds(Step, kind=st.just("action"), thought=st.text(max_size=10), code=st.text(max_size=10),
                          observation=st.text(max_size=10)), max_size=6), st.text(max_size=20))
def test_to_messages_alternates_and_ends_ready_for_the_next_turn(actions: list[Step], question: str) -> None:
    steps = [Step(kind="plan", thought="plan")] + actions
    messages = to_messages(question, steps)
    assert [m["role"] for m in messages[:2]] == ["system", "user"]
    assert messages[0]["content"] == SYSTEM_PROMPT and messages[1]["content"] == question
    rest = messages[2:]
    assert len(rest) == 2 * len(steps)
    assert [m["role"] for m in rest] == ["assistant", "user"] * len(steps)
    for step, (said, seen) in zip(steps, zip(rest[::2], rest[1::2])):
        assert said["content"] == render_step(step)
        assert seen["content"] == render_observation(step)
        assert seen["content"].startswith(OBSERVATION_PREFIX)
    assert messages[-1]["role"] == "user"
    assert next_kind(steps) == "action" and next_kind([]) == "plan"


def test_to_messages_custom_system_and_empty_history() -> None:
    assert to_messages("q", [], system="S") == [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}]


def test_render_observation_of_plans_and_actions() -> None:
    assert render_observation(Step(kind="plan", thought="p", observation="ignored")) == "Observation: " + PLAN_OBSERVATION
    bad_plan = Step(kind="plan", thought="p", parse_error="no plan", observation="Error: your step could not be parsed")
    assert render_observation(bad_plan) == "Observation: Error: your step could not be parsed"
    assert render_observation(Step(kind="action", thought="t", code="x", observation="42")) == "Observation: 42"


@pytest.mark.parametrize("kwargs,expected", [
    ({"output": "3\n"}, "3"),
    ({"output": "a\nb\n\n"}, "a\nb"),
    ({"output": "  indented\n"}, "  indented"),
    ({"output": ""}, NO_OUTPUT),
    ({"output": "  \n\n"}, NO_OUTPUT),
    ({"output": "", "error": "NameError: name 'x' is not defined\n"}, "Error: NameError: name 'x' is not defined"),
    ({"output": "partial\n", "error": "ValueError: bad"}, "partial\nError: ValueError: bad"),
    ({"output": "", "error": ""}, NO_OUTPUT),
    ({"output": "", "timed_out": True, "timeout_s": 10.0},
     "Error: the code timed out after 10 s; the interpreter was restarted and earlier variables restored."),
    ({"output": "1\n", "timed_out": True},
     "1\nError: the code timed out; the interpreter was restarted and earlier variables restored."),
    ({"output": "x", "timed_out": True, "timeout_s": 2.5, "error": "also"},
     "x\nError: the code timed out after 2.5 s; the interpreter was restarted and earlier variables restored."),
    ({"output": "printed", "error": "E", "parse_error": "empty <code> block"},
     "Error: your step could not be parsed: empty <code> block. Nothing was run."),
])
def test_format_observation_cases(kwargs: dict, expected: str) -> None:
    assert format_observation(**kwargs) == expected


@pytest.mark.parametrize("code,expected", [
    ("final_answer(3)", True), ("x = 1\nfinal_answer (x)", True), ("my_final_answer(3)", False),
    ("final_answer", False), ("print('final answer')", False),
])
def test_calls_final_answer(code: str, expected: bool) -> None:
    assert calls_final_answer(code) is expected
