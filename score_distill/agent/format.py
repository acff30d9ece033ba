"""The CodeAct step format: the one place that renders steps to text and parses text to steps.

Turn 0 is a plan, every later turn an action:

    <first_thought>plan</first_thought>
    <thought>reasoning</thought>
    <code>
    python code
    </code>

After each action the code's output comes back as a user turn `Observation: ...`. The plan
turn gets the fixed observation `none`. Calling `final_answer(x)` inside the code ends the
episode.

Parsing never raises on model output. Whatever the model wrote, `parse_turn` returns a
`ParsedTurn`; when the text breaks the format, `error` says how, the rollout does not run the
code, and the agent sees the error as its observation.

    >>> p = parse_turn("<thought>add</thought>\\n<code>\\nprint(1 + 1)\\n</code>", "action")
    >>> (p.thought, p.code, p.error)
    ('add', 'print(1 + 1)', None)
    >>> parse_turn("<thought>x</thought>", "action").error
    'no <code> block: write your code between <code> and </code>'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from score_distill.types import Step

PLAN_OPEN, PLAN_CLOSE = "<first_thought>", "</first_thought>"
THOUGHT_OPEN, THOUGHT_CLOSE = "<thought>", "</thought>"
CODE_OPEN, CODE_CLOSE = "<code>", "</code>"
# Generation of a turn stops at the first of these (plus the model's end-of-message token).
STOP_STRINGS: tuple[str, ...] = (PLAN_CLOSE, CODE_CLOSE)
OBSERVATION_PREFIX = "Observation: "
PLAN_OBSERVATION = "none"
NO_OUTPUT = "(no output)"

SYSTEM_PROMPT = """You are an agent that solves tasks by thinking and writing Python code.
First write a short plan: <first_thought>your plan</first_thought>
Then, at each turn, write one step: <thought>your reasoning</thought>
<code>
python code
</code>
The code runs in a persistent Python interpreter: variables stay defined between steps.
Its printed output comes back to you as "Observation: ...". Print what you need to see.
Available functions:
- web_search(query: str) -> str: search the documents; returns the top results as text.
- final_answer(answer): give your final answer; this ends the task.
Give the answer in its simplest exact form (an integer, a fraction like 7/3, or a short name)."""
WEB_SEARCH_LINE = "- web_search(query: str) -> str: search the documents; returns the top results as text."
FETCH_LINE = "- fetch_page(url: str) -> str: the text of a web page (long pages are cut)."


def system_prompt(fetch: bool = False) -> str:
    """The agent's system prompt: `SYSTEM_PROMPT`, with `fetch_page` among the functions
    when the tools offer it (`tools.fetch.enabled`, evaluation only).

    >>> system_prompt() == SYSTEM_PROMPT, FETCH_LINE in system_prompt(fetch=True)
    (True, True)
    """
    return SYSTEM_PROMPT.replace(WEB_SEARCH_LINE, f"{WEB_SEARCH_LINE}\n{FETCH_LINE}") if fetch else SYSTEM_PROMPT


@dataclass(frozen=True)
class ParsedTurn:
    """What could be read from one assistant turn. `error` is None when it is well formed."""

    kind: str
    thought: str
    code: str
    error: str | None = None


def _between(text: str, open_tag: str, close_tag: str) -> tuple[list[str], bool]:
    """All complete `open...close` spans and whether an opened span was left unclosed."""
    spans, pos, unclosed = [], 0, False
    while True:
        start = text.find(open_tag, pos)
        if start < 0:
            return spans, unclosed
        end = text.find(close_tag, start + len(open_tag))
        if end < 0:
            return spans, True
        spans.append(text[start + len(open_tag) : end])
        pos = end + len(close_tag)


_TAGS = (PLAN_OPEN, PLAN_CLOSE, THOUGHT_OPEN, THOUGHT_CLOSE, CODE_OPEN, CODE_CLOSE)


def _tag_inside(text: str) -> str | None:
    """The first format tag found inside a span's text, if any. A tag there means the spans
    are nested or interleaved (`<code><code></code>`), which no well-formed turn has.

    >>> _tag_inside("x = 1")
    >>> _tag_inside("<code>")
    '<code>'
    """
    return next((tag for tag in _TAGS if tag in text), None)


def _clean_code(code: str) -> str:
    """Drop blank lines around the code and trailing spaces; keep indentation inside."""
    lines = [line.rstrip() for line in code.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def parse_turn(text: str, kind: str) -> ParsedTurn:
    """Parse one assistant turn of `kind` ("plan" or "action"). Never raises.

    >>> parse_turn("<first_thought>look it up</first_thought>", "plan").thought
    'look it up'
    >>> parse_turn("<first_thought>cut off", "plan").error
    'unclosed <first_thought> tag (the turn was cut off?)'
    """
    if kind == "plan":
        return _parse_plan(text)
    if kind == "action":
        return _parse_action(text)
    raise ValueError(f"kind must be 'plan' or 'action', got {kind!r}")  # our bug, not the model's


def _parse_plan(text: str) -> ParsedTurn:
    spans, unclosed = _between(text, PLAN_OPEN, PLAN_CLOSE)
    if not spans:
        if unclosed:
            salvaged = text.split(PLAN_OPEN, 1)[1].strip()
            return ParsedTurn("plan", salvaged, "", f"unclosed {PLAN_OPEN} tag (the turn was cut off?)")
        return ParsedTurn("plan", text.strip(), "", f"no plan: write it between {PLAN_OPEN} and {PLAN_CLOSE}")
    thought = spans[0].strip()
    if len(spans) > 1:
        return ParsedTurn("plan", thought, "", "several plans: write exactly one")
    if not thought:
        return ParsedTurn("plan", thought, "", "empty plan")
    nested = _tag_inside(thought)
    if nested:
        return ParsedTurn("plan", thought, "", f"a {nested} tag inside the plan: write the plan alone")
    return ParsedTurn("plan", thought, "")


def _parse_action(text: str) -> ParsedTurn:
    thoughts, _ = _between(text, THOUGHT_OPEN, THOUGHT_CLOSE)
    thought = thoughts[0].strip() if thoughts else ""
    codes, unclosed = _between(text, CODE_OPEN, CODE_CLOSE)
    if not codes:
        if unclosed:
            salvaged = _clean_code(text.split(CODE_OPEN, 1)[1])
            return ParsedTurn("action", thought, salvaged, f"unclosed {CODE_OPEN} tag (the turn was cut off?)")
        return ParsedTurn("action", thought, "", f"no {CODE_OPEN} block: write your code between {CODE_OPEN} and {CODE_CLOSE}")
    code = _clean_code(codes[0])
    if len(codes) > 1:
        return ParsedTurn("action", thought, code, "several <code> blocks: write exactly one per step")
    if not code.strip():
        return ParsedTurn("action", thought, code, "empty <code> block")
    nested = _tag_inside(code)
    if nested:
        return ParsedTurn("action", thought, code, f"a {nested} tag inside the code: write the code alone")
    if not thoughts:
        return ParsedTurn("action", thought, code, f"no {THOUGHT_OPEN}: explain the step between {THOUGHT_OPEN} and {THOUGHT_CLOSE}")
    if len(thoughts) > 1:
        return ParsedTurn("action", thought, code, f"several {THOUGHT_OPEN} blocks: write exactly one per step")
    if not thought:
        return ParsedTurn("action", thought, code, f"empty {THOUGHT_OPEN}: explain the step before the code")
    nested = _tag_inside(thought)
    if nested:
        return ParsedTurn("action", thought, code, f"a {nested} tag inside the thought: write the thought alone")
    after = text[text.rfind(CODE_CLOSE) + len(CODE_CLOSE) :].strip()
    if after:
        return ParsedTurn("action", thought, code, f"text after {CODE_CLOSE}: end the step with the code")
    return ParsedTurn("action", thought, code)


def render_step(step: Step) -> str:
    """The assistant text of a step. A step that failed to parse renders as the model wrote
    it (`raw`), so training and replay see exactly what was generated.

    >>> render_step(Step(kind="plan", thought="two hops"))
    '<first_thought>two hops</first_thought>'
    """
    if step.raw is not None:
        return step.raw
    if step.kind == "plan":
        return f"{PLAN_OPEN}{step.thought}{PLAN_CLOSE}"
    return f"{THOUGHT_OPEN}{step.thought}{THOUGHT_CLOSE}\n{CODE_OPEN}\n{step.code}\n{CODE_CLOSE}"


def render_observation(step: Step) -> str:
    """The user turn that follows a step.

    >>> render_observation(Step(kind="action", thought="t", code="x", observation="42"))
    'Observation: 42'
    """
    body = PLAN_OBSERVATION if step.kind == "plan" and step.parse_error is None else step.observation
    return OBSERVATION_PREFIX + body


def format_observation(output: str, error: str | None = None, timed_out: bool = False,
                       timeout_s: float | None = None, parse_error: str | None = None) -> str:
    """The one observation format used by collection, training and evaluation.

    >>> format_observation("3\\n")
    '3'
    >>> format_observation("", error="NameError: name 'x' is not defined")
    "Error: NameError: name 'x' is not defined"
    >>> format_observation("", parse_error="empty <code> block")
    'Error: your step could not be parsed: empty <code> block. Nothing was run.'
    """
    if parse_error is not None:
        return f"Error: your step could not be parsed: {parse_error}. Nothing was run."
    parts = [output.rstrip("\n")] if output.strip() else []
    if timed_out:
        limit = f" after {timeout_s:g} s" if timeout_s is not None else ""
        parts.append(f"Error: the code timed out{limit}; the interpreter was restarted and earlier variables restored.")
    elif error:
        parts.append(f"Error: {error.rstrip()}")
    return "\n".join(parts) if parts else NO_OUTPUT


def to_messages(question: str, steps: list[Step], system: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """The chat conversation of a (partial) trajectory: system, question, then each step as
    an assistant turn followed by its observation as a user turn. The last step's observation
    is included, so the result is ready for the model's next turn.

    >>> [m["role"] for m in to_messages("q?", [Step(kind="plan", thought="p")])]
    ['system', 'user', 'assistant', 'user']
    """
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    for step in steps:
        messages.append({"role": "assistant", "content": render_step(step)})
        messages.append({"role": "user", "content": render_observation(step)})
    return messages


def next_kind(steps: list[Step]) -> str:
    """The kind of the next turn: a plan first, actions after.

    >>> next_kind([])
    'plan'
    """
    return "plan" if not steps else "action"


_FINAL_CALL = re.compile(r"\bfinal_answer\s*\(")


def calls_final_answer(code: str) -> bool:
    """Whether code text mentions a call to final_answer (a cheap syntactic check; the
    sandbox reports the actual call).

    >>> calls_final_answer("final_answer(x)")
    True
    """
    return bool(_FINAL_CALL.search(code))
