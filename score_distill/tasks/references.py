"""Execute a task's reference solution in the sandbox and check it reaches the gold answer.

This is how the embedded world proves itself: every generated task carries a CodeAct
solution, and running its cells with the shared tool configuration must end in
`final_answer(<gold>)`.

    python scripts/check_references.py --n 2000      # the full check over every suite/split
"""

from __future__ import annotations

from dataclasses import dataclass

from score_distill.tools.config import ToolConfig, open_sandbox
from score_distill.types import Task


@dataclass
class ReferenceRun:
    task_id: str
    final_answer: str | None
    correct: bool
    errors: list[str]


def execute_reference(task: Task, tools: ToolConfig) -> ReferenceRun:
    """Run every action cell of `task.reference` in one sandbox, stopping at final_answer."""
    if not task.reference:
        raise ValueError(f"task {task.id} has no reference solution")
    errors: list[str] = []
    answer = None
    with open_sandbox(tools, task) as sandbox:
        for step in task.reference:
            if step.kind != "action":
                continue
            result = sandbox.run(step.code)
            if result.error or result.timed_out:
                errors.append(result.error or "timed out")
            if result.final_answer is not None:
                answer = result.final_answer
                break
    correct = task.score(answer).correct
    return ReferenceRun(task.id, answer, bool(correct), errors)


def run_reference(task: Task, tools: ToolConfig) -> bool:
    """True when the reference solution runs cleanly and reaches the gold answer."""
    r = execute_reference(task, tools)
    return r.correct and not r.errors
