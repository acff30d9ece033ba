"""The teacher interface shared by the reference-solution teacher and the LLM teacher.

A teacher does four things (docs/method.md, stages 0-1):
- `solve`: produce a full CodeAct solution (the BC teacher);
- `judge`: decide whether a finished trajectory is correct and, if not, the index of its
  first critical error (0 = the first thought) with a short analysis;
- `repair`: write one replacement step for that index, given the verified prefix;
- `equivalent`: decide whether two steps taken from the same prefix are equivalent, from
  their thought, code and execution result.

Steps passed in carry their observations (the rollout executed them). Teachers never see a
live sandbox of the student's; one that needs to execute code (the reference teacher) runs
its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from score_distill.types import Step, Task


@dataclass
class Verdict:
    """A judgement of a finished trajectory. When `correct` is False, `first_error` is the
    index of the first critical error in the trajectory's steps."""

    correct: bool
    first_error: int | None = None
    analysis: str = ""
    suggestion: str = ""
    tokens: int = 0

    def __post_init__(self) -> None:
        if not self.correct and self.first_error is None:
            raise ValueError("a wrong verdict needs first_error")  # the LLM teacher validates before building one


@dataclass
class TeacherUsage:
    """Accounting of what a teacher spent (tokens are 0 for the reference teacher's
    cheap operations only when it really generated nothing)."""

    calls: int = 0
    tokens: int = 0
    by_op: dict[str, int] = field(default_factory=dict)

    def add(self, op: str, tokens: int) -> None:
        self.calls += 1
        self.tokens += tokens
        self.by_op[op] = self.by_op.get(op, 0) + 1


class Teacher(Protocol):
    usage: TeacherUsage

    def solve(self, task: Task) -> list[Step]:
        """A complete solution: a plan step, then action steps ending with final_answer.
        Steps are authored by the teacher; observations may be empty (the caller executes)."""
        ...

    def judge(self, task: Task, steps: list[Step]) -> Verdict:
        """Judge a finished trajectory (steps with their observations)."""
        ...

    def repair(self, task: Task, prefix: list[Step], mistaken: Step, verdict: Verdict) -> Step:
        """One replacement for the step at index len(prefix): a plan when the prefix is
        empty, otherwise an action. It must not state the gold answer unless it calls
        final_answer."""
        ...

    def equivalent(self, task: Task, prefix: list[Step], a: Step, b: Step) -> bool:
        """Whether steps `a` and `b`, each taken right after `prefix`, are equivalent."""
        ...
