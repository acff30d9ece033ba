"""The reference-solution teacher: the `Teacher` interface answered from each generated
task's own solution instead of an LLM, so the whole pipeline runs offline on one CPU.

    teacher = ReferenceTeacher()                     # math and search rules, built on first use
    steps = teacher.solve(task)                      # a varied, correct CodeAct solution
    verdict = teacher.judge(task, trajectory.steps)  # first critical error, if wrong
    fix = teacher.repair(task, steps[:k], steps[k], verdict)
    teacher.usage                                    # calls and tokens, per operation

It dispatches on `task.suite` to a `SuiteRules` object that does what the paper's LLM teacher
does, exactly and for free: `MathRules` (teachers/math_rules.py) and `SearchRules`
(teachers/search_rules.py), whose module docstrings define the first critical error of
their suites. `solve` draws its random choices from the task id, so it is deterministic.

Token accounting mirrors an LLM teacher's output: `solve` counts the rendered solution,
`judge` its analysis and suggestion, `repair` the rendered step, `equivalent` nothing. The
count comes from `count_tokens` (e.g. a tokenizer's length); the default estimates one token
per 4 characters, the usual ratio for English text and code under BPE tokenizers.
"""

from __future__ import annotations

import hashlib
import random
import threading
from typing import Callable, Protocol

from score_distill.agent.format import render_step
from score_distill.teachers.base import TeacherUsage, Verdict
from score_distill.types import Step, Task


class SuiteRules(Protocol):
    def solve(self, task: Task, rng: random.Random) -> list[Step]:
        """A full solution with natural, varied thoughts, code ending in final_answer."""
        ...

    def judge(self, task: Task, steps: list[Step]) -> Verdict:
        """Steps carry their observations."""
        ...

    def repair(self, task: Task, prefix: list[Step], mistaken: Step, verdict: Verdict) -> Step:
        """One replacement step for index len(prefix), in the student's format; a new plan if
        prefix is empty; never the gold answer unless it calls final_answer."""
        ...

    def equivalent(self, task: Task, prefix: list[Step], a: Step, b: Step) -> bool:
        """From their code's execution results."""
        ...


def estimate_tokens(text: str) -> int:
    """About one token per 4 characters, rounded up.

    >>> estimate_tokens("print(36 / 4)"), estimate_tokens("")
    (4, 0)
    """
    return -(-len(text) // 4)


def task_seed(task_id: str, purpose: str) -> int:
    """A seed derived from the task id (stable across runs and machines).

    >>> task_seed("math-0-train-1", "solve") == task_seed("math-0-train-1", "solve")
    True
    """
    return int.from_bytes(hashlib.sha256(f"{purpose}/{task_id}".encode()).digest()[:8], "big")


def default_rules(suite: str) -> SuiteRules:
    """The built-in rules of a suite (imported on first use: each pulls in its generator)."""
    if suite == "math":
        from score_distill.teachers.math_rules import MathRules

        return MathRules()
    if suite == "search":
        from score_distill.teachers.search_rules import SearchRules

        return SearchRules()
    raise ValueError(f"the reference teacher has no rules for suite {suite!r} (it knows 'math' and 'search'); "
                     f"use the LLM teacher for external tasks")


class ReferenceTeacher:
    """A `Teacher` (teachers/base.py) that works from the tasks' reference solutions."""

    def __init__(self, rules: dict[str, SuiteRules] | None = None,
                 count_tokens: Callable[[str], int] | None = None) -> None:
        """`rules` maps suite names to rules; None means the built-in math and search rules."""
        self.usage = TeacherUsage()
        self.count_tokens = count_tokens or estimate_tokens
        self._lock = threading.Lock()   # MPS calls the teacher from several threads
        self._given = rules is not None
        self._rules: dict[str, SuiteRules] = dict(rules or {})

    def rules_for(self, task: Task) -> SuiteRules:
        with self._lock:
            if task.suite not in self._rules:
                if self._given:
                    raise ValueError(f"task {task.id}: no reference rules for suite {task.suite!r}; "
                                     f"this teacher has {sorted(self._rules)}")
                self._rules[task.suite] = default_rules(task.suite)
            return self._rules[task.suite]

    def solve(self, task: Task) -> list[Step]:
        steps = self.rules_for(task).solve(task, random.Random(task_seed(task.id, "solve")))
        for s in steps:  # what each written step cost, so records can add it up
            s.n_tokens = self.count_tokens(render_step(s))
        self._count("solve", sum(s.n_tokens for s in steps))
        return steps

    def judge(self, task: Task, steps: list[Step]) -> Verdict:
        verdict = self.rules_for(task).judge(task, steps)
        if not verdict.correct and not 0 <= (verdict.first_error or 0) < len(steps):
            raise ValueError(f"task {task.id}: rules blamed step {verdict.first_error} of {len(steps)}")  # our bug
        verdict.tokens = self.count_tokens(f"{verdict.analysis}\n{verdict.suggestion}")
        self._count("judge", verdict.tokens)
        return verdict

    def repair(self, task: Task, prefix: list[Step], mistaken: Step, verdict: Verdict) -> Step:
        step = self.rules_for(task).repair(task, prefix, mistaken, verdict)
        step.n_tokens = self.count_tokens(render_step(step))
        self._count("repair", step.n_tokens)
        return step

    def equivalent(self, task: Task, prefix: list[Step], a: Step, b: Step) -> bool:
        same = self.rules_for(task).equivalent(task, prefix, a, b)
        self._count("equivalent", 0)
        return same

    def _count(self, op: str, tokens: int) -> None:
        with self._lock:
            self.usage.add(op, tokens)
