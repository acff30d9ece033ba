"""A step's rollouts in SCoRe-RL: `group_size` samples of each item, rolled out from its
verified prefix (or from the question), scored with the key-step reward, given their
group-relative advantages (`collect`), then rendered as the trainer scores them, on the ids
the engine sampled (`render_samples`); `item_groups` says which trained samples share an
item, so the update scores their common prefix once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from score_distill.agent.rollout import Episode, rollout
from score_distill.tools.config import ToolConfig
from score_distill.train.render import SampledRender, render_sampled
from score_distill.train.rewards import KeyStepJudge, RewardResult, group_advantages, rollout_reward
from score_distill.types import KeyStepItem, Task, Trajectory

if TYPE_CHECKING:
    from score_distill.train.rl import RLOptions


@dataclass
class Sample:
    """One rollout of a step: its item, trajectory, first trained step index and reward."""

    item: KeyStepItem
    question: str
    traj: Trajectory
    start: int
    result: RewardResult
    advantage: float = 0.0


def collect(engine: Any, items: list[KeyStepItem], tasks_by_id: dict[str, Task], tools: ToolConfig,
            judge: KeyStepJudge | None, opts: RLOptions, step: int, slots: list[int] | None = None) -> list[Sample]:
    """Run `group_size` rollouts per item (consecutive samples form a group), score them and
    set their advantages. Sample indices are unique within the step, so no two live
    trajectories share a cache key, and the stage names the step, so every step draws new
    samples. `slots` are the items' places in the step's whole batch (default 0, 1, ...): a
    process that rolls out its share of a step gives each item the sample indices, and so
    the seeds, it has in a one-process run. The rewards are scored `judge_concurrency` at a
    time (each may ask the teacher to judge a key step)."""
    from concurrent.futures import ThreadPoolExecutor

    slots = list(range(len(items))) if slots is None else slots
    episodes, owners = [], []
    for slot, item in zip(slots, items):
        prefix = list(item.prefix) if opts.short_horizon else []
        episodes += [Episode(tasks_by_id[item.task_id], prefix=prefix, sample=slot * opts.group_size + k)
                     for k in range(opts.group_size)]
        owners += [item] * opts.group_size
    config = dataclasses.replace(opts.rollout, stage=f"{opts.rollout.stage}-{step}")  # new samples every step
    trajs = rollout(engine, episodes, tools, config, keep_sampled=True)

    def score(i: int) -> RewardResult:
        return rollout_reward(trajs[i], owners[i], episodes[i].task, judge, opts.use_key_step,
                              key_index=len(owners[i].prefix))

    with ThreadPoolExecutor(max_workers=max(1, opts.judge_concurrency)) as pool:
        results = list(pool.map(score, range(len(episodes))))
    samples = [Sample(item, ep.task.question, traj, len(ep.prefix), result)
               for item, ep, traj, result in zip(owners, episodes, trajs, results)]
    advantages = group_advantages([s.result.reward for s in samples], opts.group_size, opts.scale_advantages)
    for s, a in zip(samples, advantages):
        s.advantage = a
    return samples


def item_groups(trained: list[int], group_size: int) -> list[list[int]]:
    """Positions in `trained` (sample indices of a step, consecutive `group_size` per item)
    grouped by the item they belong to: the groups `batches.micro_batches` shares prefixes in.

    >>> item_groups([0, 2, 3, 4, 7], 4)
    [[0, 1, 2], [3, 4]]
    """
    by_item: dict[int, list[int]] = {}
    for pos, i in enumerate(trained):
        by_item.setdefault(i // group_size, []).append(pos)
    return list(by_item.values())


def render_samples(tokenizer: Any, samples: list[Sample], max_length: int) -> list[SampledRender]:
    """Each sample as the trainer scores it (its sampled ids, `render_sampled`), with the loss
    on the steps generated in this rollout only, cut to `max_length` tokens."""
    return [render_sampled(tokenizer, s.question, s.traj.steps, train_on=lambda i, _, k=s.start: i >= k).cut(max_length)
            for s in samples]
