"""Planted errors in `math` reference trajectories, for the teacher audit (teachers/planted.py).

The audit generates math tasks with one quantity per reference step (`pair_rate` 0), so
reference step i computes the i-th computed quantity of the problem's DAG into a variable of
its name and prints it; the last quantity's step may call `final_answer` instead, or a last
step answers alone. The planted kinds, each changing step k, which is then the first critical
error as teachers/math_rules.py defines it:

- wrong_number: step k, a quantity other than the answer, adds 1000003 to its result: a
  wrong number that later steps carry forward;
- wrong_operation: step k swaps the first operator of its expression (+ with -, * with /),
  kept only where the value it shows is one no correct solution reaches;
- premature_answer: step k, a quantity other than the answer, also answers with it;
- wrong_final_answer: the last step answers its variable plus one.

The correct kinds: `reference` (a solution written with other random choices, quantities
sometimes two to a step), `unused_step` (a side product of two stated numbers that nothing
uses, right after the plan), `error_then_fix` (a step that prints a quantity before
computing it, a NameError, then the reference goes on).

The reworded step at k is the reference step with its variable renamed (`<name>_value`,
everywhere in the step) and another thought; a step that only answers first binds the
answer to a new name.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

from score_distill.tasks.math_solution import step_thought, write_solution
from score_distill.teachers.math_rules import problem_of
from score_distill.teachers.math_trace import numbers_in
from score_distill.teachers.planted import Plant
from score_distill.tools.config import ToolConfig
from score_distill.types import Step, Task

WRONG_BY = 1000003
_SWAPS = {"+": "-", "-": "+", "*": "/", "/": "*"}
_OPERATOR = re.compile(r" ([-+*/]) ")
_FINAL = re.compile(r"final_answer\((\w+)\)")


def act(code: str, thought: str) -> Step:
    return Step(kind="action", thought=thought, code=code)


def swap_operator(code: str, var: str) -> str | None:
    """`code` with the first operator of `var`'s assignment swapped; None if it has none.

    >>> swap_operator("from fractions import Fraction\\nleft = 30 - 6\\nprint(left)", "left")
    'from fractions import Fraction\\nleft = 30 + 6\\nprint(left)'
    >>> swap_operator("x = y\\nprint(x)", "x") is None
    True
    """
    lines = code.split("\n")
    for i, line in enumerate(lines):
        head = f"{var} = "
        if line.startswith(head):
            expr = line[len(head):]
            m = _OPERATOR.search(expr)
            if m is None:
                return None
            expr = expr[:m.start(1)] + _SWAPS[m.group(1)] + expr[m.end(1):]
            lines[i] = head + expr
            return "\n".join(lines)
    return None


class MathPlanting:
    """The `math` suite's planting rules (see the module docstring)."""

    correct_kinds = ("reference", "unused_step", "error_then_fix")
    planted_kinds = ("wrong_number", "wrong_operation", "premature_answer", "wrong_final_answer")
    # One quantity per reference step: what the audit's generator must be given.
    difficulty = {"pair_rate": 0.0}
    # The reference imports Fraction in its first step only; a repair there need not.
    setup = 'if "Fraction" not in globals():\n    from fractions import Fraction'

    def correct(self, task: Task, kind: str, rng: random.Random) -> list[Step] | None:
        p = problem_of(task)
        ref = list(task.reference or [])
        if kind == "reference":
            return write_solution(p.nodes, p.answer, rng)
        if kind == "unused_step":
            stated = [n.value for n in p.nodes if n.op == "given" and n.value.denominator == 1]
            if len(stated) < 2:
                return None
            a, b = rng.sample(stated, 2)
            side = act(f"side_product = {a} * {b}\nprint(side_product)",
                       f"I'll also note {a} times {b}, in case it is needed.")
            return ref[:1] + [side] + ref[1:]
        if kind == "error_then_fix":
            i = rng.randint(1, len(p.computed))
            node = p.computed[i - 1]
            early = act(f"print({node.name})", f"Let me look at {node.desc} first.")
            return ref[:i] + [early] + ref[i:]
        raise ValueError(f"unknown correct kind {kind!r}")

    def plant(self, task: Task, kind: str, rng: random.Random, tools: ToolConfig) -> Plant | None:
        p = problem_of(task)
        ref = list(task.reference or [])
        if len(ref) != len(p.computed) + 1 + (_FINAL.fullmatch(ref[-1].code) is not None):
            raise ValueError(f"task {task.id}: the audit needs one quantity per reference step (pair_rate 0)")
        inner = [i for i in range(1, len(p.computed) + 1) if p.computed[i - 1].name != p.answer]
        off_path = False
        if kind in ("wrong_number", "premature_answer"):
            if not inner:
                return None
            k = rng.choice(inner)
            var = p.computed[k - 1].name
            if kind == "wrong_number":
                code, off_path = ref[k].code.replace(f"{var} = ", f"{var} = {WRONG_BY} + ", 1), True
            else:
                code = ref[k].code + f"\nfinal_answer({var})"
        elif kind == "wrong_operation":
            swaps = {i: swap_operator(ref[i].code, p.computed[i - 1].name) for i in range(1, len(p.computed) + 1)}
            swaps = {i: code for i, code in swaps.items() if code is not None}
            if not swaps:
                return None
            k = rng.choice(sorted(swaps))
            code, off_path = swaps[k], True
        elif kind == "wrong_final_answer":
            k = len(ref) - 1
            code = _FINAL.sub(r"final_answer(\1 + 1)", ref[k].code)
        else:
            raise ValueError(f"unknown planted kind {kind!r}")
        steps = ref[:k] + [replace(ref[k], code=code, author="student")] + ref[k + 1:]
        return Plant(steps, k, self._reworded(task, k, rng), off_path)

    @staticmethod
    def _reworded(task: Task, k: int, rng: random.Random) -> Step:
        p = problem_of(task)
        step = (task.reference or [])[k]
        if k <= len(p.computed) and f"{p.computed[k - 1].name} = " in step.code:
            node = p.computed[k - 1]
            code = re.sub(rf"\b{node.name}\b", f"{node.name}_value", step.code)
            thoughts = {step_thought(node, random.Random(rng.random())) for _ in range(8)} - {step.thought}
            return act(code, sorted(thoughts)[0] if thoughts else step.thought)
        m = _FINAL.search(step.code)
        if m is None:
            raise ValueError(f"task {task.id}: reference step {k} neither computes nor answers")  # our bug
        return act(f"answer_value = {m.group(1)}\nfinal_answer(answer_value)", "The asked quantity is known; report it.")

    def wrong(self, task: Task, steps: list[Step], plant: Plant) -> bool:
        changed = steps[plant.first_error]
        if task.score(steps[-1].final_answer).correct or not changed.ok:
            return False
        if plant.off_path and changed.final_answer is None:
            shown = numbers_in(changed.observation)
            return bool(shown) and all(v not in problem_of(task).valid for v in shown)
        return True

    def bindings(self, task: Task, k: int) -> dict[str, str]:
        """The quantities of steps 1..k, exact."""
        return {n.name: f"Fraction({n.value.numerator}, {n.value.denominator})" for n in problem_of(task).computed[:k]}

    def outcome(self, task: Task, prefix: list[Step], step: Step) -> object:
        return step.ok, tuple(numbers_in(step.observation)), step.final_answer
