"""The key-step reward table, the order of the equivalence checks, and group advantages."""

from __future__ import annotations

import itertools
import math

import pytest

from score_distill.teachers.base import TeacherUsage
from score_distill.train.rewards import (REWARDS, KeyStepJudge, group_advantages, key_step_reward,
                                         reward_kind, rollout_reward)
from score_distill.types import KeyStepItem, Step, Task, Trajectory

PLAN = Step(kind="plan", thought="add the two numbers")
FIX = Step(kind="action", thought="add", code="x = 3 + 4\nprint(x)", observation="7", author="teacher")
MISTAKE = Step(kind="action", thought="multiply", code="x = 3 * 4\nprint(x)", observation="12")
TASK = Task(id="t0", question="What is 3 + 4?", answer="7", suite="math")
ITEM = KeyStepItem(task_id="t0", question=TASK.question, answer="7", suite="math", prefix=[PLAN],
                   chosen=FIX, rejected=MISTAKE)


def act(code: str, observation: str = "", final: str | None = None) -> Step:
    return Step(kind="action", thought="step", code=code, observation=observation, final_answer=final)


def traj(*steps: Step) -> Trajectory:
    final = next((s.final_answer for s in steps if s.final_answer is not None), None)
    return Trajectory(task_id="t0", steps=list(steps), final_answer=final, finished=final is not None)


class CodeTeacher:
    """Equivalence = same code; records every question it is asked."""

    def __init__(self) -> None:
        self.usage = TeacherUsage()
        self.asked: list[tuple[str, str]] = []

    def equivalent(self, task: Task, prefix: list[Step], a: Step, b: Step) -> bool:
        self.asked.append((a.code, b.code))
        return a.code == b.code


# The table of docs/method.md, stage 3, written out case by case.
TABLE = [
    # correct, finished, eq_chosen, eq_rejected, use_key_step -> reward
    (True, True, None, None, True, 1.0),
    (True, True, True, None, True, 1.0),
    (True, True, False, True, True, 1.0),
    (True, True, None, None, False, 1.0),
    (False, False, True, None, True, 0.0),
    (False, False, False, False, True, 0.0),
    (False, True, True, None, True, 0.5),
    (False, True, True, True, True, 0.5),      # equivalent to both: the verified fix wins
    (False, True, False, True, True, 0.0),
    (False, True, False, False, True, 0.1),
    (False, True, False, None, True, 0.1),
    (False, True, None, None, True, 0.0),      # outcome-only item
    (False, True, True, None, False, 0.0),     # ablation: outcome only
    (False, True, False, False, False, 0.0),
]


@pytest.mark.parametrize("correct,finished,eq_chosen,eq_rejected,key_step,expected", TABLE)
def test_reward_table(correct, finished, eq_chosen, eq_rejected, key_step, expected):
    assert key_step_reward(correct, finished, eq_chosen, eq_rejected, key_step) == expected
    assert REWARDS[reward_kind(correct, finished, eq_chosen, eq_rejected, key_step)] == expected


def test_every_input_gets_a_reward_of_the_table():
    levels = set(REWARDS.values())
    for args in itertools.product([True, False], [True, False], [None, True, False], [None, True, False],
                                  [True, False]):
        r = key_step_reward(*args)
        assert r in levels
        if not args[4]:  # the ablation never gives partial credit
            assert r in (0.0, 1.0)


def test_correct_answer_needs_no_judge():
    teacher = CodeTeacher()
    result = rollout_reward(traj(PLAN, act("final_answer(7)", final="7")), ITEM, TASK, KeyStepJudge(teacher))
    assert (result.reward, result.kind, teacher.asked) == (1.0, "correct", [])


def test_key_step_equal_to_fix_checks_chosen_only():
    teacher = CodeTeacher()
    t = traj(PLAN, act(FIX.code, "7"), act("final_answer(8)", final="8"))
    result = rollout_reward(t, ITEM, TASK, KeyStepJudge(teacher))
    assert (result.reward, result.kind) == (0.5, "chosen")
    assert teacher.asked == [(FIX.code, FIX.code)]


def test_key_step_equal_to_mistake_asks_chosen_then_rejected():
    teacher = CodeTeacher()
    t = traj(PLAN, act(MISTAKE.code, "12"), act("final_answer(12)", final="12"))
    result = rollout_reward(t, ITEM, TASK, KeyStepJudge(teacher))
    assert (result.reward, result.kind, result.eq_chosen, result.eq_rejected) == (0.0, "rejected", False, True)
    assert teacher.asked == [(MISTAKE.code, FIX.code), (MISTAKE.code, MISTAKE.code)]


def test_new_wrong_key_step_gets_small_credit_and_only_the_key_step_is_judged():
    teacher = CodeTeacher()
    t = traj(PLAN, act("x = 3 - 4", ""), act(FIX.code, "7"), act("final_answer(1)", final="1"))
    result = rollout_reward(t, ITEM, TASK, KeyStepJudge(teacher))
    assert (result.reward, result.kind) == (0.1, "neither")
    assert {a for a, _ in teacher.asked} == {"x = 3 - 4"}  # the later copy of the fix is not the key step


def test_unfinished_and_ablation_and_outcome_only_items_skip_the_judge():
    teacher = CodeTeacher()
    judge = KeyStepJudge(teacher)
    unfinished = traj(PLAN, act(FIX.code, "7"))
    assert rollout_reward(unfinished, ITEM, TASK, judge).kind == "unfinished"
    wrong = traj(PLAN, act(FIX.code, "7"), act("final_answer(8)", final="8"))
    assert rollout_reward(wrong, ITEM, TASK, judge, use_key_step=False).reward == 0.0
    plain = KeyStepItem(task_id="t0", question=TASK.question, answer="7", suite="math")
    fresh = traj(PLAN, act(FIX.code, "7"), act("final_answer(8)", final="8"))
    assert rollout_reward(fresh, plain, TASK, None).kind == "wrong"
    assert teacher.asked == []


def test_key_index_for_rollouts_from_the_question():
    """Without the short horizon the key step is the step at the item's index of a fresh
    rollout; an episode that ends before that index has no key step to judge."""
    teacher = CodeTeacher()
    fresh = traj(PLAN, act(FIX.code, "7"), act("final_answer(9)", final="9"))
    assert rollout_reward(fresh, ITEM, TASK, KeyStepJudge(teacher), key_index=1).kind == "chosen"
    short = traj(act("final_answer(9)", final="9"))
    assert rollout_reward(short, ITEM, TASK, KeyStepJudge(teacher), key_index=1).kind == "wrong"


def test_judge_memo_asks_once_per_distinct_step():
    teacher = CodeTeacher()
    judge = KeyStepJudge(teacher)
    t = traj(PLAN, act(MISTAKE.code, "12"), act("final_answer(12)", final="12"))
    for _ in range(4):
        rollout_reward(t, ITEM, TASK, judge)
    assert judge.calls == len(teacher.asked) == 2


def test_missing_judge_is_our_bug():
    t = traj(PLAN, act(FIX.code, "7"), act("final_answer(8)", final="8"))
    with pytest.raises(ValueError, match="no equivalence judge"):
        rollout_reward(t, ITEM, TASK, None)


@pytest.mark.parametrize("rewards,size", [([1.0, 0.0, 0.1, 0.5], 4), ([0.0, 1.0, 0.5, 0.5, 0.1, 0.0], 3),
                                          ([0.3, 0.9], 2)])
def test_group_advantages_centre_and_scale_each_group(rewards, size):
    raw = group_advantages(rewards, size, scale=False)
    scaled = group_advantages(rewards, size)
    for lo in range(0, len(rewards), size):
        group = rewards[lo : lo + size]
        mean = sum(group) / size
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / size)
        assert raw[lo : lo + size] == pytest.approx([r - mean for r in group])
        assert sum(scaled[lo : lo + size]) == pytest.approx(0.0, abs=1e-9)
        if std > 0:
            assert scaled[lo : lo + size] == pytest.approx([(r - mean) / std for r in group], rel=1e-3)
        # order is preserved: a higher reward never gets a lower advantage
        pairs = sorted(zip(group, scaled[lo : lo + size]))
        assert [a for _, a in pairs] == sorted(a for _, a in pairs)


def test_all_equal_group_gives_zeros_and_bad_sizes_raise():
    assert group_advantages([0.5, 0.5, 1.0, 0.0], 2)[:2] == [0.0, 0.0]
    assert group_advantages([0.1] * 4, 4) == [0.0] * 4
    with pytest.raises(ValueError):
        group_advantages([1.0, 0.0, 0.0], 2)
