"""One step of a trajectory: run it in a sandbox, and check that it can stand in one.

Every stage that executes steps goes through `run_action` (the rollout loop for the
student's actions, BC for the teacher's solutions, MPS for the teacher's fix), so a step's
observation is made the same way wherever it was written. `step_problem` is the one check
that a step written outside the rollout loop (a teacher's solution or fix) has the shape
the student is trained to produce: a plan first, actions after, text that renders and
parses back unchanged.

    sandbox = open_sandbox(tools, task)
    run_action(sandbox, step, tools.sandbox.timeout_s)   # fills step.observation, ...
"""

from __future__ import annotations

from collections.abc import Sequence

from score_distill.agent.format import format_observation, parse_turn, render_step
from score_distill.tools.config import ToolConfig, open_sandbox
from score_distill.tools.sandbox import Sandbox
from score_distill.types import Step, Task


def prefix_cells(steps: Sequence[Step]) -> list[str]:
    """The cells that rebuild a prefix's interpreter state: its successful actions, in order.

    >>> prefix_cells([Step(kind="plan", thought="p"), Step(kind="action", thought="t", code="x = 1"),
    ...               Step(kind="action", thought="t", code="1/0", error="ZeroDivisionError")])
    ['x = 1']
    """
    return [s.code for s in steps if s.kind == "action" and s.ok]


def run_action(sandbox: Sandbox, step: Step, timeout_s: float) -> float:
    """Run an action step's code in `sandbox`, fill in its error, timeout, final answer and
    observation (the one observation format), and return the time the tool took."""
    result = sandbox.run(step.code)
    step.error, step.timed_out, step.final_answer = result.error, result.timed_out, result.final_answer
    step.observation = format_observation(result.output, result.error, result.timed_out, timeout_s)
    return result.duration_s


def execute_steps(task: Task, steps: Sequence[Step], tools: ToolConfig, prefix: Sequence[Step] = ()) -> list[Step]:
    """Run teacher-written `steps` in order in ONE fresh sandbox whose state is first rebuilt
    from `prefix` (its successful cells replayed, their output discarded), filling in real
    observations; steps after the first `final_answer` are dropped. The steps are copied and
    authored "teacher". No sandbox starts when there is no action to run."""
    out: list[Step] = []
    sandbox: Sandbox | None = None
    try:
        for s in steps:
            step = Step(kind=s.kind, thought=s.thought, code=s.code, author="teacher", n_tokens=s.n_tokens)
            out.append(step)
            if step.kind != "action":
                continue
            if sandbox is None:
                sandbox = open_sandbox(tools, task)
                sandbox.replay(prefix_cells(prefix))
            run_action(sandbox, step, tools.sandbox.timeout_s)
            if step.final_answer is not None:
                break
    finally:
        if sandbox is not None:
            sandbox.close()
    return out


def step_problem(step: Step, index: int) -> str | None:
    """Why `step` cannot stand at `index` of a trajectory (None when it can): a plan at index
    0, an action after it, and no text the format could not read or would not give back.

    >>> plan, act = Step(kind="plan", thought="p"), Step(kind="action", thought="t", code="x = 2")
    >>> step_problem(plan, 0) is None, step_problem(act, 3) is None
    (True, True)
    >>> step_problem(act, 0)
    'step 0 is action, expected plan'
    """
    kind = "plan" if index == 0 else "action"
    if step.kind != kind:
        return f"step {index} is {step.kind}, expected {kind}"
    if step.parse_error is not None or step.raw is not None:
        return f"step {index} is malformed ({step.parse_error or 'raw text'})"
    error = parse_turn(render_step(step), kind).error
    return None if error is None else f"step {index} does not parse back ({error})"
