"""The reference-solution teacher: dispatch by suite, deterministic varied solutions that
solve their tasks in the sandbox, and usage accounting."""

from __future__ import annotations

import random

import pytest

from score_distill.agent.format import render_step
from score_distill.tasks import search_suite
from score_distill.tasks.math_suite import SPLITS, generate
from score_distill.teachers.base import Teacher, Verdict
from score_distill.teachers.reference import ReferenceTeacher, estimate_tokens, task_seed
from score_distill.tools.sandbox import Sandbox
from score_distill.types import Step, Task


def final_of(steps: list[Step]) -> str | None:
    with Sandbox() as sb:
        for s in steps:
            if s.kind == "action":
                r = sb.run(s.code)
                assert r.error is None, (s.code, r.error)
                if r.final_answer is not None:
                    return r.final_answer
    return None


@pytest.mark.slow
@pytest.mark.parametrize("split", SPLITS)
def test_every_reference_and_teacher_solution_reaches_the_gold_answer(split: str) -> None:
    teacher = ReferenceTeacher()
    for i, task in enumerate(generate(split, 30, seed=1)):
        assert final_of(task.reference) == task.answer, task.question
        if i % 3 == 0:
            assert final_of(teacher.solve(task)) == task.answer, task.question


def test_solve_is_deterministic_per_task_and_varied_across_calls_of_tasks() -> None:
    tasks = generate("train", 20, seed=2)
    a, b = ReferenceTeacher(), ReferenceTeacher()
    for t in tasks:
        assert [s.to_json() for s in a.solve(t)] == [s.to_json() for s in b.solve(t)]
    plans = {a.solve(t)[0].thought.split(" ")[0] for t in tasks}
    assert len(plans) > 1   # plan wording varies
    differs = sum(render_step(a.solve(t)[1]) != render_step(t.reference[1]) for t in tasks)
    assert differs > 5      # not a copy of the stored reference
    assert task_seed("math-0-train-0", "solve") != task_seed("math-0-train-1", "solve")


def test_usage_counts_each_operation_and_the_text_produced() -> None:
    lengths: list[int] = []

    def count(text: str) -> int:
        lengths.append(len(text))
        return len(text.split())

    teacher = ReferenceTeacher(count_tokens=count)
    t = generate("test", 1, seed=3)[0]
    steps = teacher.solve(t)
    solve_tokens = len("\n".join(render_step(s) for s in steps).split())
    assert teacher.usage.tokens == solve_tokens and teacher.usage.by_op == {"solve": 1}
    wrong = steps[:-1] + [Step(kind="action", thought="answer", code="final_answer(-1)", final_answer="-1")]
    verdict = teacher.judge(t, wrong)
    assert not verdict.correct and verdict.tokens == len(f"{verdict.analysis}\n{verdict.suggestion}".split()) > 0
    fix = teacher.repair(t, wrong[:verdict.first_error], wrong[verdict.first_error], verdict)
    assert teacher.equivalent(t, wrong[:verdict.first_error], fix, fix)
    assert teacher.usage.by_op == {"solve": 1, "judge": 1, "repair": 1, "equivalent": 1}
    assert teacher.usage.calls == 4
    assert teacher.usage.tokens == solve_tokens + verdict.tokens + len(render_step(fix).split())
    assert estimate_tokens("x" * 10) == 3


class CountingRules:
    """Scripted rules for a toy suite: records what it was asked."""

    def __init__(self) -> None:
        self.seeds: list[float] = []

    def solve(self, task: Task, rng: random.Random) -> list[Step]:
        self.seeds.append(rng.random())
        return [Step(kind="plan", thought="p", author="teacher")]

    def judge(self, task: Task, steps: list[Step]) -> Verdict:
        return Verdict(correct=False, first_error=len(steps), analysis="out of range")

    def repair(self, task: Task, prefix: list[Step], mistaken: Step, verdict: Verdict) -> Step:
        return Step(kind="plan", thought="q", author="teacher")

    def equivalent(self, task: Task, prefix: list[Step], a: Step, b: Step) -> bool:
        return False


def test_dispatch_by_suite() -> None:
    toy = CountingRules()
    teacher: Teacher = ReferenceTeacher(rules={"toy": toy})
    task = Task(id="toy-1", question="?", answer="1", suite="toy")
    teacher.solve(task)
    teacher.solve(task)
    assert len(toy.seeds) == 2 and toy.seeds[0] == toy.seeds[1]
    with pytest.raises(ValueError, match="blamed step 1 of 1"):   # a rules bug is ours: raised
        teacher.judge(task, [Step(kind="plan", thought="p")])
    with pytest.raises(ValueError, match="no reference rules for suite 'math'"):
        teacher.solve(generate("train", 1, seed=0)[0])
    with pytest.raises(ValueError, match="no rules for suite 'gsm8k'"):
        ReferenceTeacher().solve(Task(id="g-1", question="?", answer="1", suite="gsm8k"))


def test_default_rules_cover_math_and_search() -> None:
    teacher = ReferenceTeacher()
    search_task = search_suite.generate("train", 1, seed=0)[0]
    steps = teacher.solve(search_task)
    assert steps[0].kind == "plan" and "final_answer(" in steps[-1].code
    math_task = generate("train", 1, seed=0)[0]
    assert teacher.judge(math_task, math_task.reference).correct
    assert teacher.usage.by_op == {"solve": 1, "judge": 1}


def test_written_steps_carry_their_token_cost() -> None:
    """Records add up step.n_tokens, so the steps the teacher writes must say what they cost."""
    task = generate("train", 1, seed=3)[0]
    teacher = ReferenceTeacher()
    steps = teacher.solve(task)
    assert all(s.n_tokens == estimate_tokens(render_step(s)) > 0 for s in steps)
    assert teacher.usage.tokens == sum(s.n_tokens for s in steps)
    wrong = [steps[0], Step(kind="action", thought="guess", code="final_answer(-1)", final_answer="-1")]
    verdict = teacher.judge(task, wrong)
    fixed = teacher.repair(task, wrong[: verdict.first_error], wrong[verdict.first_error], verdict)
    assert fixed.n_tokens == estimate_tokens(render_step(fixed)) > 0
