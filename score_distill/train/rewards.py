"""Rewards of SCoRe-RL: the key-step reward and group-relative advantages.

The reward of one rollout (docs/method.md, stage 3):

    correct final answer                                   1.0
    finished (called final_answer) but wrong, key step ...
        ... equivalent to the teacher's fix (chosen)       0.5
        ... equivalent to the student's mistake (rejected) 0.0
        ... equivalent to neither (avoided the mistake)    0.1
    never called final_answer                              0.0

The key step is the first generated step, at index `len(item.prefix)` of the trajectory.
Items without an intervention (`chosen` is None) get the outcome reward only (1.0 / 0.0),
and so does every item in the "no key-step reward" ablation.

Order of the equivalence checks: chosen first, and rejected is only asked when the key step
is not equivalent to chosen. A step equivalent to both means the judge cannot tell the fix
from the mistake on this item; the fix was verified by the episode that reached the gold
answer, so the benefit of the doubt goes to it. Checking chosen first also saves one judge
call whenever the student reproduces the fix.

    from score_distill.train.rewards import KeyStepJudge, rollout_reward, group_advantages
    judge = KeyStepJudge(teacher)
    r = rollout_reward(traj, item, task, judge)            # RewardResult(reward=0.5, kind="chosen", ...)
    advantages = group_advantages([r.reward for r in results], group_size=4)
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future
from dataclasses import dataclass

from score_distill.agent.format import render_step
from score_distill.teachers.base import Teacher
from score_distill.types import KeyStepItem, Step, Task, Trajectory

# The reward of each outcome; `reward_kind` decides which outcome a rollout had.
REWARDS: dict[str, float] = {
    "correct": 1.0,     # the final answer is right
    "chosen": 0.5,      # finished wrong, key step equivalent to the teacher's fix
    "neither": 0.1,     # finished wrong, key step avoided the known mistake
    "rejected": 0.0,    # finished wrong, key step repeats the known mistake
    "wrong": 0.0,       # finished wrong, no key step to judge (or the key-step reward is off)
    "unfinished": 0.0,  # never called final_answer
}


def reward_kind(correct: bool, finished: bool, eq_chosen: bool | None, eq_rejected: bool | None,
                use_key_step: bool = True) -> str:
    """Which outcome of `REWARDS` a rollout had.

    `eq_chosen` is None when there is nothing to compare (an outcome-only item, or an episode
    that ended before reaching the key step's index); `eq_rejected` is None when it was not
    asked (it is only asked after `eq_chosen` came back False) and then counts as "not
    equivalent to the mistake".

    >>> reward_kind(False, True, False, True)
    'rejected'
    >>> reward_kind(False, True, True, None, use_key_step=False)
    'wrong'
    """
    if correct:
        return "correct"
    if not finished:
        return "unfinished"
    if not use_key_step or eq_chosen is None:
        return "wrong"
    if eq_chosen:
        return "chosen"
    return "rejected" if eq_rejected else "neither"


def key_step_reward(correct: bool, finished: bool, eq_chosen: bool | None, eq_rejected: bool | None,
                    use_key_step: bool = True) -> float:
    """The reward of one rollout from its outcome and the judge's verdicts on its key step
    (see `reward_kind` for the meaning of None).

    >>> key_step_reward(True, True, None, None)              # correct answer
    1.0
    >>> key_step_reward(False, False, True, None)            # never called final_answer
    0.0
    >>> key_step_reward(False, True, True, None)             # wrong, key step = teacher's fix
    0.5
    >>> key_step_reward(False, True, False, True)            # wrong, key step = old mistake
    0.0
    >>> key_step_reward(False, True, False, False)           # wrong, avoided the known mistake
    0.1
    >>> key_step_reward(False, True, False, None)            # rejected not asked: not the mistake
    0.1
    >>> key_step_reward(False, True, None, None)             # outcome-only item, wrong answer
    0.0
    >>> key_step_reward(False, True, True, None, use_key_step=False)   # ablation: outcome only
    0.0
    >>> key_step_reward(True, True, None, None, use_key_step=False)
    1.0
    """
    return REWARDS[reward_kind(correct, finished, eq_chosen, eq_rejected, use_key_step)]


def group_advantages(rewards: list[float], group_size: int, scale: bool = True, eps: float = 1e-4) -> list[float]:
    """GRPO advantages: each reward minus the mean of its group of `group_size` consecutive
    rewards, divided by the group's standard deviation (+ eps) when `scale` is set. A group
    whose rewards are all equal carries no signal and gets zeros.

    >>> group_advantages([1.0, 0.0, 0.0, 0.0], 4, scale=False)
    [0.75, -0.25, -0.25, -0.25]
    >>> [round(a, 3) for a in group_advantages([1.0, 0.0, 0.5, 0.5], 2)]
    [1.0, -1.0, 0.0, 0.0]
    >>> group_advantages([0.1, 0.1, 0.1], 3)
    [0.0, 0.0, 0.0]
    """
    if group_size < 1 or len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group_size}")
    out: list[float] = []
    for lo in range(0, len(rewards), group_size):
        group = rewards[lo : lo + group_size]
        mean = sum(group) / len(group)
        if all(r == group[0] for r in group):
            out += [0.0] * len(group)
            continue
        # Population std (GRPO's normalisation over the group itself).
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / len(group))
        out += [(r - mean) / (std + eps) if scale else r - mean for r in group]
    return out


def reward_summary(rewards: list[float], group_size: int) -> dict[str, float]:
    """Mean reward, share of each reward level, and the share of groups whose rewards are
    not all equal (only those carry a gradient).

    >>> s = reward_summary([1.0, 0.0, 0.5, 0.5], 2)
    >>> s["reward"], s["r1.0"], s["r0.5"], s["r0.1"], s["r0"], s["signal"]
    (0.5, 0.25, 0.5, 0.0, 0.25, 0.5)
    """
    n = max(1, len(rewards))
    # Rounded: rewards that went through a float32 tensor (0.1 -> 0.10000000149) still count.
    levels = [round(float(r), 6) for r in rewards]
    groups = [levels[i : i + group_size] for i in range(0, len(levels), group_size)]
    return {
        "reward": sum(levels) / n,
        "r1.0": sum(r == 1.0 for r in levels) / n,
        "r0.5": sum(r == 0.5 for r in levels) / n,
        "r0.1": sum(r == 0.1 for r in levels) / n,
        "r0": sum(r == 0.0 for r in levels) / n,
        "signal": sum(len(set(g)) > 1 for g in groups) / max(1, len(groups)),
    }


class KeyStepJudge:
    """The teacher's `equivalent` with a memo: the G rollouts of a group often write the same
    key step, and a judgement depends only on the task, the prefix and the two steps. Safe to
    call from several threads: a question asked while the same one is in flight waits for
    its answer instead of asking again; a call that fails is forgotten (asked again later)."""

    def __init__(self, teacher: Teacher) -> None:
        self.teacher = teacher
        self.calls = 0
        self._memo: dict[tuple[str, ...], Future] = {}
        self._lock = threading.Lock()

    def equivalent(self, task: Task, prefix: list[Step], a: Step, b: Step) -> bool:
        key = (task.id, *(_step_key(s) for s in prefix), "\x1e", _step_key(a), _step_key(b))
        with self._lock:
            answer, ask = self._memo.get(key), key not in self._memo
            if ask:
                answer = self._memo[key] = Future()
                self.calls += 1
        if ask:
            try:
                answer.set_result(bool(self.teacher.equivalent(task, prefix, a, b)))
            except BaseException as exc:
                with self._lock:
                    del self._memo[key]
                answer.set_exception(exc)
                raise
        return answer.result()


def _step_key(step: Step) -> str:
    return f"{step.kind}\x1f{render_step(step)}\x1f{step.observation}"


@dataclass(frozen=True)
class RewardResult:
    """The reward of one rollout and how it was reached."""

    reward: float
    kind: str
    correct: bool
    finished: bool
    eq_chosen: bool | None = None
    eq_rejected: bool | None = None


def rollout_reward(traj: Trajectory, item: KeyStepItem, task: Task, judge: KeyStepJudge | None,
                   use_key_step: bool = True, key_index: int | None = None) -> RewardResult:
    """Score a rollout of `item`. The key step is `traj.steps[key_index]` (default: the first
    generated step, `len(item.prefix)`). The judge is asked only when the answer is wrong, the
    episode finished, the item has an intervention and the key-step reward is on; the
    prefix passed to it is the item's verified prefix, the context in which chosen and
    rejected were taken."""
    score = task.score(traj.final_answer)
    correct, finished = bool(score.correct), traj.finished
    k = item.step_index if key_index is None else key_index
    eq_chosen = eq_rejected = None
    wants_judge = use_key_step and not correct and finished and item.chosen is not None
    if wants_judge and k < len(traj.steps):
        if judge is None:
            raise ValueError(f"item {item.task_id} has an intervention but no equivalence judge was given")
        step = traj.steps[k]
        eq_chosen = judge.equivalent(task, item.prefix, step, item.chosen)
        if not eq_chosen and item.rejected is not None:
            eq_rejected = judge.equivalent(task, item.prefix, step, item.rejected)
    kind = reward_kind(correct, finished, eq_chosen, eq_rejected, use_key_step)
    return RewardResult(REWARDS[kind], kind, correct, finished, eq_chosen, eq_rejected)
