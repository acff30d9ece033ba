"""Prompts of the LLM teacher (judge, repair, equivalence) and the parsers of their replies.

A prompt and the reply format it asks for change together, so both live here under one
`PROMPT_VERSION`; the version is part of every cached call's key, so editing a template
and bumping it invalidates old cached replies instead of replaying them.

Steps are shown to the teacher exactly as the agent wrote them (`agent.format.render_step`),
numbered from 0 (the first thought), each followed by its observation cut to a bound.

Reply parsers are pure: they return the parsed value or raise `ReplyError`, whose message
is shown to the model when the call is retried.

    >>> parse_equivalence_reply('{"equivalent": true, "reason": "same sum"}')
    (True, 'same sum')
    >>> parse_first_error_reply('{"is_correct": false, "error_analysis": "", "first_error_step": 5,'
    ...                   ' "suggestion": ""}', n_steps=3)
    Traceback (most recent call last):
    ...
    score_distill.teachers.prompts.ReplyError: first_error_step 5 is out of range: the steps are numbered 0 to 2
"""

from __future__ import annotations

import json
from typing import Any

from score_distill.agent.format import PLAN_CLOSE, PLAN_OPEN, SYSTEM_PROMPT, parse_turn, render_step
from score_distill.teachers.base import Verdict
from score_distill.types import Step, Task

PROMPT_VERSION = "1"

JUDGE_SYSTEM = """You grade the work of an agent that answers questions by writing a short plan (step 0) and then steps of Python code; each step's printed output is shown as its observation. You are given the gold answer.

Decide whether the agent's final answer is correct (equal to the gold answer, in any equivalent form). If it is not, find the first critical error: the earliest step whose action takes the agent off every path that could still reach the correct answer. Critical errors include:
- computing or reading a wrong intermediate value that later steps use;
- searching for, or settling on, the wrong entity;
- giving a final answer that is wrong or premature.
These are not critical errors: a redundant but harmless step; independent steps done in another order; a different but correct way to compute something; a failed step the agent recovers from.
The plan (step 0) is the first critical error only if following it cannot lead to the answer. If the agent never gave a final answer, choose the earliest step after which it could no longer succeed.

Reply with one JSON object and nothing else:
{"is_correct": true or false, "error_analysis": "what goes wrong at that step and why, in at most three sentences", "first_error_step": the step number, or null when correct, "suggestion": "what that step should do instead; do not state the final answer"}"""

JUDGE_USER = """Question:
{question}

Gold answer: {answer}

The agent's final answer: {final}

The agent's steps (numbered 0 to {last}):

{steps}"""

REPAIR_SYSTEM = """You are an expert at the agent task below. The agent works under these instructions:
---
{agent_prompt}
---
You are shown a question, the agent's steps so far (all of them sound), the next step it took (which contains a mistake) and advice about that step. Write the one step the agent should take instead.
Rules:
- Write exactly one step and nothing else: {shape}.
- Write it as the agent's own next step, continuing naturally from the steps so far. Do not mention the mistaken step, the advice, or that anything is being corrected.
- Do not write down a result the steps so far have not shown: compute it or look it up in code and print it. Call final_answer only with values the agent has already obtained."""

PLAN_SHAPE = f"a new plan, {PLAN_OPEN}...{PLAN_CLOSE}"
ACTION_SHAPE = "<thought>...</thought> followed by <code>...</code>"

REPAIR_USER = """Question:
{question}

The agent's steps so far:

{prefix}

The step it took next (step {index}), which contains the mistake:

{mistaken}

What went wrong: {analysis}
Advice: {suggestion}

Write step {index} now, as {shape}."""

# The JSON the judge and equivalence calls must reply with, as JSON Schemas: sent where the
# endpoint constrains decoding to one (`response_format` json_schema), and the shape the
# parsers below check either way.
REPLY_SCHEMAS: dict[str, dict[str, Any]] = {
    "judge": {"type": "object", "additionalProperties": False,
              "required": ["is_correct", "error_analysis", "first_error_step", "suggestion"],
              "properties": {"is_correct": {"type": "boolean"}, "error_analysis": {"type": "string"},
                             "first_error_step": {"type": ["integer", "null"]}, "suggestion": {"type": "string"}}},
    "equivalence": {"type": "object", "additionalProperties": False, "required": ["equivalent", "reason"],
                    "properties": {"equivalent": {"type": "boolean"}, "reason": {"type": "string"}}},
}

EQUIVALENCE_SYSTEM = """You compare two candidate next steps of an agent that answers questions by writing Python code. Both steps were taken right after the same earlier steps. They are equivalent when they pursue the same idea and obtain the same useful information (the same values, the same entity, the same answer), so that the rest of the solution would go on in the same way. Wording, variable names, code style and output formatting do not matter. A step whose code failed is equivalent to another only if that one gains nothing either.

Reply with one JSON object and nothing else:
{"equivalent": true or false, "reason": "one sentence"}"""

EQUIVALENCE_USER = """Question:
{question}

The earlier steps:

{prefix}

Step A (step {index}):

{a}

Step B (step {index}):

{b}"""

RETRY_NOTE = "Your reply could not be used: {problem}. Reply again, following the required format exactly."

NO_PREFIX = "(none yet: the next step is the plan)"


class ReplyError(ValueError):
    """The teacher's reply breaks the format asked for (the model's mistake)."""


def truncate(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters, keeping its head and tail (errors tend to
    come last).

    >>> truncate("abcdefghij", 6)
    'abcd\\n[... 4 characters cut ...]\\nij'
    """
    if len(text) <= limit:
        return text
    head = (2 * limit) // 3
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - limit} characters cut ...]\n{text[len(text) - tail:]}"


def render_steps(steps: list[Step], max_observation_chars: int, start: int = 0) -> str:
    """Steps as the agent wrote them, numbered from `start`, with their observations.

    >>> print(render_steps([Step(kind="action", thought="t", code="print(2)", observation="2")], 100, start=1))
    [step 1]
    <thought>t</thought>
    <code>
    print(2)
    </code>
    Observation: 2
    """
    blocks = []
    for i, step in enumerate(steps, start=start):
        lines = [f"[step {i}]", render_step(step)]
        if step.kind == "action" or step.parse_error is not None:
            lines.append("Observation: " + truncate(step.observation, max_observation_chars))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def judge_messages(task: Task, steps: list[Step], max_observation_chars: int) -> list[dict[str, str]]:
    final = next((s.final_answer for s in reversed(steps) if s.final_answer is not None), None)
    user = JUDGE_USER.format(question=task.question, answer=task.answer,
                             final=final if final is not None else "(none: it never called final_answer)",
                             last=len(steps) - 1, steps=render_steps(steps, max_observation_chars))
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def repair_messages(task: Task, prefix: list[Step], mistaken: Step, analysis: str, suggestion: str,
                    max_observation_chars: int) -> list[dict[str, str]]:
    """The repair prompt. `analysis` and `suggestion` must already have the gold answer
    withheld (`leak.withhold_answer`); the gold answer itself never appears here."""
    shape = PLAN_SHAPE if not prefix else ACTION_SHAPE
    index = len(prefix)
    user = REPAIR_USER.format(question=task.question,
                              prefix=render_steps(prefix, max_observation_chars) if prefix else NO_PREFIX,
                              index=index, mistaken=render_steps([mistaken], max_observation_chars, start=index),
                              analysis=analysis or "(not given)", suggestion=suggestion or "(not given)", shape=shape)
    system = REPAIR_SYSTEM.format(agent_prompt=SYSTEM_PROMPT, shape=shape)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def equivalence_messages(task: Task, prefix: list[Step], a: Step, b: Step,
                         max_observation_chars: int) -> list[dict[str, str]]:
    index = len(prefix)
    user = EQUIVALENCE_USER.format(question=task.question,
                                   prefix=render_steps(prefix, max_observation_chars) if prefix else NO_PREFIX,
                                   index=index,
                                   a=render_steps([a], max_observation_chars, start=index),
                                   b=render_steps([b], max_observation_chars, start=index))
    return [{"role": "system", "content": EQUIVALENCE_SYSTEM}, {"role": "user", "content": user}]


def parse_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in `text` (code fences and chatter around it are ignored).

    >>> parse_json_object('```json\\n{"a": 1}\\n```')
    {'a': 1}
    """
    start = text.find("{")
    if start < 0:
        raise ReplyError("no JSON object found")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as e:
        raise ReplyError(f"the JSON object is malformed ({e.msg} at character {e.pos})") from None
    if not isinstance(value, dict):
        raise ReplyError("expected a JSON object")
    return value


def _field(obj: dict[str, Any], name: str, kind: type, kind_name: str) -> Any:
    if name not in obj:
        raise ReplyError(f'missing key "{name}"')
    value = obj[name]
    # bool is a subclass of int in Python; a JSON true is not a step number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ReplyError(f'"{name}" must be {kind_name}, got {json.dumps(value)}')
    return value


def parse_first_error_reply(text: str, n_steps: int) -> Verdict:
    """A Verdict from the judge's JSON; a wrong verdict must name a step in [0, n_steps-1].

    >>> v = parse_first_error_reply('{"is_correct": false, "error_analysis": "wrong entity",'
    ...                       ' "first_error_step": 1, "suggestion": "search X"}', n_steps=3)
    >>> (v.correct, v.first_error, v.suggestion)
    (False, 1, 'search X')
    """
    obj = parse_json_object(text)
    correct = _field(obj, "is_correct", bool, "true or false")
    analysis = _field(obj, "error_analysis", str, "a string")
    suggestion = _field(obj, "suggestion", str, "a string")
    if correct:
        return Verdict(correct=True, analysis=analysis, suggestion=suggestion)
    if obj.get("first_error_step") is None:
        raise ReplyError('"first_error_step" must be a step number when "is_correct" is false')
    step = _field(obj, "first_error_step", int, "an integer")
    if not 0 <= step < n_steps:
        raise ReplyError(f"first_error_step {step} is out of range: the steps are numbered 0 to {n_steps - 1}")
    return Verdict(correct=False, first_error=step, analysis=analysis, suggestion=suggestion)


def parse_equivalence_reply(text: str) -> tuple[bool, str]:
    """(equivalent, reason) from the equivalence judge's JSON."""
    obj = parse_json_object(text)
    return _field(obj, "equivalent", bool, "true or false"), _field(obj, "reason", str, "a string")


def parse_repair_reply(text: str, kind: str) -> Step:
    """The teacher's replacement step (author "teacher"), parsed with the agent's own parser.

    >>> parse_repair_reply("<first_thought>add them</first_thought>", "plan").thought
    'add them'
    >>> parse_repair_reply("<thought>x</thought>", "action")
    Traceback (most recent call last):
    ...
    score_distill.teachers.prompts.ReplyError: the step is not in the agent's format: no <code> block: write your code between <code> and </code>
    """
    parsed = parse_turn(text.strip(), kind)
    if parsed.error is not None:
        raise ReplyError(f"the step is not in the agent's format: {parsed.error}")
    return Step(kind=kind, thought=parsed.thought, code=parsed.code, author="teacher")
