"""Tests of the search suite's teacher rules: errors planted at known steps of reference
trajectories are found exactly; harmless variations are not flagged; the repaired step,
spliced in and followed by the reference remainder, solves the task in the sandbox."""

from __future__ import annotations

import json
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from score_distill.agent.format import format_observation, render_step
from score_distill.tasks.search_reference import move_step, reference_steps, source_hop
from score_distill.tasks.search_suite import generate
from score_distill.tasks.world import build_world
from score_distill.teachers.leak import leaks_answer
from score_distill.teachers.planted_search import detour_task
from score_distill.teachers.search_rules import SearchRules
from score_distill.tools.config import ToolConfig, open_sandbox
from score_distill.types import Step, Task

RULES = SearchRules()
TOOLS = ToolConfig()


def execute(task: Task, steps: list[Step]) -> list[Step]:
    """Run the steps in one sandbox as a rollout would, filling in their observations."""
    out: list[Step] = []
    with open_sandbox(TOOLS, task) as sandbox:
        for s in steps:
            s = Step.from_dict(s.to_dict())
            if s.kind == "action" and s.parse_error is not None:
                s.observation = format_observation("", parse_error=s.parse_error)
            elif s.kind == "action":
                r = sandbox.run(s.code)
                s.error, s.timed_out, s.final_answer = r.error, r.timed_out, r.final_answer
                s.observation = format_observation(r.output, r.error, r.timed_out, TOOLS.sandbox.timeout_s)
            out.append(s)
            if s.final_answer is not None:
                break
    return out


def _pick(pred: object, tasks: list[Task]) -> Task:
    return next(t for t in tasks if pred(t))  # type: ignore[operator]


DEV = generate("dev", 120, seed=0)
OOD = generate("ood", 120, seed=0)
TASKS = {
    "bridge2": _pick(lambda t: t.meta["form"] == "bridge" and t.meta["hops"] == 2, DEV),
    "bridge3": _pick(lambda t: t.meta["form"] == "bridge" and t.meta["hops"] == 3, DEV),
    "bridge4": _pick(lambda t: t.meta["form"] == "bridge" and t.meta["hops"] == 4, OOD),
    "comparison2": _pick(lambda t: t.meta["form"] == "comparison" and t.meta["hops"] == 2, DEV),
    "comparison4": _pick(lambda t: t.meta["form"] == "comparison" and t.meta["hops"] == 4, DEV),
}
BRIDGES = ["bridge2", "bridge3", "bridge4"]


def ref(task: Task) -> list[Step]:
    return [Step.from_dict(s.to_dict()) for s in task.reference or []]


def act(code: str, thought: str = "Let me check.") -> Step:
    return Step(kind="action", thought=thought, code=code)


def _on_path(task: Task) -> set[str]:
    return {h[k].lower() for h in task.meta["path"] for k in ("source", "value")}


def detour(task: Task, i: int, observation: str) -> list[Step] | None:
    """A coherent wrong trajectory: the reference up to hop i, whose source is replaced by
    another entity of the same type (preferably one the previous search showed), and the
    same chain followed from there (`planted_search.detour_task`). Its first critical error
    is step i + 1. None when no replacement changes the final answer."""
    wrong = detour_task(task, i, observation, random.Random(i))
    if wrong is None:
        return None
    done = execute(task, ref(task)[:1] + reference_steps(wrong, random.Random(1))[1:])
    assert done[-1].final_answer not in (None, task.answer)
    return done


def _check_repair(task: Task, steps: list[Step], k: int, remainder: list[Step]) -> None:
    """The teacher's step for index k, then `remainder`, reaches the gold answer; the step
    names the answer only where the prefix had already shown it."""
    verdict = RULES.judge(task, steps)
    fix = RULES.repair(task, steps[:k], steps[k], verdict)
    assert fix.author == "teacher" and fix.kind == ("plan" if k == 0 else "action")
    known = task.question + "\n" + "\n".join(s.observation for s in steps[:k])
    assert not leaks_answer(render_step(fix), task.answer, known), render_step(fix)
    done = execute(task, steps[:k] + [fix] + remainder)
    assert done[-1].final_answer == task.answer, [s.code for s in done]
    assert not any(s.error for s in done)


def test_reference_trajectories_are_judged_correct() -> None:
    for name, task in TASKS.items():
        steps = execute(task, RULES.solve(task, random.Random(5)))
        assert steps[-1].final_answer == task.answer, name
        assert RULES.judge(task, steps).correct, name


@pytest.mark.parametrize("name", BRIDGES + ["comparison4"])
def test_wrong_entity_extracted_and_used(name: str) -> None:
    task = TASKS[name]
    good = execute(task, ref(task))
    tried = 0
    for i in range(1, task.meta["hops"]):
        if source_hop(task.meta["path"], i) is None:
            continue  # the second chain of a comparison starts from its anchor
        steps = detour(task, i, good[i].observation)
        if steps is None:
            continue
        tried += 1
        verdict = RULES.judge(task, steps)
        assert not verdict.correct and verdict.first_error == i + 1, (i, verdict)
        assert task.answer.lower() not in (verdict.analysis + verdict.suggestion).lower() or \
            task.answer.lower() in task.question.lower()
        _check_repair(task, steps, i + 1, ref(task)[i + 2 :])
    assert tried >= 1


@pytest.mark.parametrize("name", ["bridge3", "comparison4"])
def test_search_for_the_wrong_entity_whose_result_is_used(name: str) -> None:
    task = TASKS[name]
    path = task.meta["path"]
    starts = [i for i in range(len(path)) if source_hop(path, i) is None]
    good = execute(task, ref(task))
    tried = 0
    for i in starts:  # search another anchor than the question's, then follow its chain
        steps = detour(task, i, good[i].observation)
        if steps is None:
            continue
        tried += 1
        assert RULES.judge(task, steps).first_error == i + 1
        _check_repair(task, steps, i + 1, ref(task)[i + 2 :])
    assert tried >= 1


@pytest.mark.parametrize("name", BRIDGES)
def test_skipped_hop_then_guess_and_early_answer(name: str) -> None:
    task = TASKS[name]
    path, world = task.meta["path"], build_world(0)
    gold_type = path[-1]["value_type"]
    guess = str(int(task.answer) + 3) if gold_type == "year" else \
        next(e.name for e in world.of_type(gold_type) if e.name.lower() not in _on_path(task))
    for j in range(1, task.meta["hops"]):
        prefix = ref(task)[: j + 1]  # hops 0..j-1 searched
        cases = {
            "guess": prefix + [act(f"final_answer({json.dumps(guess)})")],
            "guess via a variable": prefix + [act(f"x = {json.dumps(guess)}\nprint(x)"), act("final_answer(x)")],
            "early answer": prefix + [act(f"final_answer({json.dumps(path[j - 1]['value'])})")],
        }
        for case, steps in cases.items():
            done = execute(task, steps)
            verdict = RULES.judge(task, done)
            assert not verdict.correct and verdict.first_error == j + 1, (case, j, verdict)
            _check_repair(task, done, j + 1, ref(task)[j + 2 :])


@pytest.mark.parametrize("name", list(TASKS))
def test_wrong_final_answer_is_the_last_step(name: str) -> None:
    task = TASKS[name]
    steps = ref(task)
    last = steps[-1]
    if task.meta["form"] == "comparison":
        last.code = last.code.replace(" < ", " > ") if " < " in last.code else last.code.replace(" > ", " < ")
    else:
        lines = last.code.splitlines()
        var, value = lines[0].split(" = ")
        lines[0] = f"{var} = {int(value) - 1}" if value.isdigit() else f'{var} = "Wrongville"'
        last.code = "\n".join(lines)
    done = execute(task, steps)
    assert done[-1].final_answer != task.answer
    verdict = RULES.judge(task, done)
    assert verdict.first_error == len(done) - 1
    _check_repair(task, done, len(done) - 1, [])


def _with_wrong_final(task: Task, steps: list[Step]) -> list[Step]:
    steps[-1] = act('final_answer("Nobody Knows")')
    return steps


@pytest.mark.parametrize("name", list(TASKS))
def test_harmless_variations_are_not_flagged(name: str) -> None:
    task = TASKS[name]
    world = build_world(0)
    stranger = next(e for e in world.of_type("person") if e.name.lower() not in _on_path(task))
    extra = ref(task)
    extra.insert(2, act(f'print(web_search("{stranger.name} birthplace"))'))  # an unused extra search
    repeat = ref(task)
    repeat.insert(2, Step.from_dict(repeat[1].to_dict()))  # the same search twice
    broken = ref(task)
    broken.insert(2, Step(kind="action", thought="", code="", parse_error="no <code> block", raw="hmm"))
    literal = ref(task)  # different but correct queries: just the entity's name, written out
    for step, hop in zip(literal[1:], task.meta["path"]):
        lines = step.code.splitlines()
        lines[-1] = f"print(web_search({json.dumps(hop['source'])}))"
        step.code = "\n".join(lines)
    for variant in (extra, repeat, broken, literal, ref(task)[:1] + RULES.solve(task, random.Random(77))[1:]):
        assert RULES.judge(task, execute(task, variant)).correct
        wrong = execute(task, _with_wrong_final(task, variant))
        assert RULES.judge(task, wrong).first_error == len(wrong) - 1


def _swapped(task: Task) -> list[Step]:
    """The comparison's reference with its two independent chains in the other order."""
    path = task.meta["path"]
    swapped = [h for h in path if h["side"] == 1] + [h for h in path if h["side"] == 0]
    swapped = [dict(h, side=1 - h["side"]) for h in swapped]
    meta = dict(task.meta, path=swapped, anchors=task.meta["anchors"][::-1], compared=task.meta["compared"][::-1])
    return reference_steps(Task(id=task.id, question=task.question, answer=task.answer, suite="search", meta=meta),
                           random.Random(3))


@pytest.mark.parametrize("name", ["comparison2", "comparison4"])
def test_swapped_independent_chains(name: str) -> None:
    task = TASKS[name]
    steps = execute(task, _swapped(task))
    assert steps[-1].final_answer == task.answer and RULES.judge(task, steps).correct
    wrong = execute(task, _with_wrong_final(task, _swapped(task)))
    assert RULES.judge(task, wrong).first_error == len(wrong) - 1
    _check_repair(task, wrong, len(wrong) - 1, [])


def test_repair_binds_values_the_prefix_stored_under_other_names() -> None:
    task = TASKS["comparison4"]
    steps = ref(task)
    names = {h["var"]: f"v{i}" for i, h in enumerate(task.meta["path"])}
    for s in steps[1:]:
        for old, new in names.items():
            s.code = re.sub(rf"\b{old}\b", new, s.code)
    done = execute(task, steps)
    assert done[-1].final_answer == task.answer
    for k in range(3, len(done)):  # cut anywhere after the first chain and repair from there
        _check_repair(task, done[:k] + [act("print('lost')")], k, ref(task)[k + 1 :])


def test_never_answering() -> None:
    task = TASKS["bridge3"]
    steps = ref(task)
    stalled = execute(task, steps[:3] + [Step.from_dict(steps[2].to_dict())] * 3)
    verdict = RULES.judge(task, stalled)
    assert verdict.first_error == 3 and "never answers" in verdict.analysis
    _check_repair(task, stalled, 3, ref(task)[4:])
    # The budget ran out while still making progress: the wasted turn is the error.
    wasted = execute(task, steps[:2] + [act("print('thinking')")] + steps[2:-1])
    assert RULES.judge(task, wasted).first_error == 2
    only_plan = steps[:1]
    assert RULES.judge(task, only_plan).first_error == 0
    _check_repair(task, only_plan, 0, ref(task)[1:])


def test_equivalence_from_what_steps_establish() -> None:
    task = TASKS["bridge3"]
    good = execute(task, ref(task))
    wrong = detour(task, 1, good[1].observation)
    assert wrong is not None
    prefix = wrong[:2]
    fix = execute(task, prefix + [RULES.repair(task, prefix, wrong[2], RULES.judge(task, wrong))])[2]
    other_wording = execute(task, prefix + [move_step(task, 1, random.Random(123))])[2]
    assert RULES.equivalent(task, prefix, fix, other_wording)
    assert RULES.equivalent(task, prefix, fix, good[2])
    assert not RULES.equivalent(task, prefix, fix, wrong[2])
    wrong_name = re.search(r'= "([^"]+)"', wrong[2].code).group(1)  # type: ignore[union-attr]
    same_mistake = execute(task, prefix + [act(f'print(web_search("{wrong_name}"))')])[2]
    assert RULES.equivalent(task, prefix, wrong[2], same_mistake)
    answers = [execute(task, prefix + [act(f'final_answer("{a}")')])[2] for a in ("Xa", "xa.", "Yb")]
    assert RULES.equivalent(task, prefix, answers[0], answers[1])
    assert not RULES.equivalent(task, prefix, answers[0], answers[2])
    plans = [Step(kind="plan", thought="one"), Step(kind="plan", thought="two"),
             Step(kind="plan", thought="", parse_error="no plan")]
    assert RULES.equivalent(task, [], plans[0], plans[1])
    assert not RULES.equivalent(task, [], plans[0], plans[2])


def test_judge_rejects_tasks_of_other_suites() -> None:
    with pytest.raises(ValueError, match="not a generated search task"):
        RULES.judge(Task(id="m", question="1+1?", answer="2", suite="math"), [])


_PIECES = ["a", "b", " ", "=", '"', "'", "(", ")", "+", "\n", "1962", "Velora", "print(", "final_answer(", "\x00",
           "((((", "x = ", "web_search(", "Tarsholm", "final_answer(x)"]
_PIECES += sorted({h[k] for h in TASKS["comparison4"].meta["path"] for k in ("source", "value")})
_PIECES += [e.name for e in build_world(0).of_type("city")[:3]]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=20).map("".join)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_TEXT, _TEXT, st.one_of(st.none(), _TEXT), st.booleans()), max_size=7))
def test_judge_and_equivalence_never_raise_on_model_text(raw: list[tuple[str, str, str | None, bool]]) -> None:
    """Whatever the student wrote and saw, the verdict is well formed (steps are not run)."""
    task = TASKS["comparison4"]
    steps = [Step(kind="plan", thought="p")] + [
        Step(kind="action", thought="t", code=code, observation=obs, final_answer=final,
             parse_error="broken" if broken else None) for code, obs, final, broken in raw]
    verdict = RULES.judge(task, steps)
    assert verdict.correct or 0 <= verdict.first_error < len(steps)  # type: ignore[operator]
    if len(steps) > 1:
        assert RULES.equivalent(task, steps[:-1], steps[-1], steps[-1])
