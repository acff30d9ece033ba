"""THE rollout loop: many CodeAct trajectories at once, from the question or from a prefix.

Every stage runs episodes through `rollout()`: evaluation, cold-start collection, mentored
problem-solving (the student continues after a teacher's fix) and RL (groups of samples
from a verified prefix). One loop means one observation format and one turn budget.

How it works:
1. Up to `batch_size` trajectories are live. Each has its own sandbox; a trajectory that
   starts from a prefix gets its interpreter state rebuilt by replaying the prefix's
   successful cells (`Sandbox.replay`).
2. Each live trajectory's next turn (a plan for turn 0, an action after) goes to the model's
   turn stream (`ChatModel.open_stream`) as soon as it is ready. The local engine lets it join
   the running batch at the next decoding step (continuous batching), so no trajectory waits
   for the slowest turn of the others; other backends get every ready turn in one batched
   call. The backend may reuse each trajectory's KV cache (`cache_key` = trajectory key).
3. Each turn is parsed; its action runs in its sandbox in a thread (the work is in the
   sandbox process) while the model goes on with the other rows. Parse errors, tool errors
   and timeouts become observations.
4. A trajectory finishes when its code calls `final_answer`, the turn budget is spent, or
   (when asked) after K unparseable turns or K repeated actions in a row; it leaves (its
   cache is released) and the next queued one takes its place.

    from score_distill.agent.rollout import rollout, RolloutConfig, Episode
    trajs = rollout(model, [Episode(task)], ToolConfig(), RolloutConfig(max_turns=8))
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Iterator

from score_distill.agent.format import (STOP_STRINGS, format_observation, next_kind, parse_turn, system_prompt,
                                        to_messages)
from score_distill.agent.steps import prefix_cells, run_action
from score_distill.config import option
from score_distill.models.base import ChatModel, Generation, GenRequest, SamplingParams, TurnStream
from score_distill.seeds import derive_seed
from score_distill.storage import safe_text
from score_distill.tools.config import ToolConfig, open_sandbox
from score_distill.tools.sandbox import Sandbox
from score_distill.types import Step, Task, Trajectory


DEFAULT_TURNS = 8


@dataclass
class RolloutConfig:
    max_turns: int | None = option(None, "assistant turns per episode, the plan included (prefix turns count); "
                                         f"unset: {DEFAULT_TURNS}, or in `score-distill run` the run's one turn "
                                         "budget, its `max_turns`")
    max_new_tokens: int = option(256, "token cap for one turn")
    temperature: float = option(0.0, "sampling temperature (0 = greedy)")
    top_p: float = option(1.0, "nucleus sampling mass")
    batch_size: int = option(16, "trajectories generated together")
    seed: int = option(0, "base seed; each turn's seed derives from (seed, stage, task, sample, turn)")
    stage: str = option("eval", "stage name mixed into seeds, so stages never share samples")
    max_format_errors: int = option(0, "end an episode after this many consecutive turns that do not parse "
                                       "(0 = never); an untrained student otherwise spends every turn's "
                                       "token cap on text the format cannot read")
    max_repeats: int = option(0, "end an episode after this many consecutive actions that repeat an earlier "
                                 "action's code and get its observation again (0 = never); a weak student "
                                 "stuck in such a loop rarely leaves it and spends the turn budget there")

    @property
    def turn_budget(self) -> int:
        """`max_turns`, or the default when it is unset."""
        return DEFAULT_TURNS if self.max_turns is None else self.max_turns


@dataclass
class Episode:
    """One trajectory to run: a task, an optional prefix of already-taken steps (with their
    observations), and a sample index (distinct samples of one task get distinct seeds)."""

    task: Task
    prefix: list[Step] = field(default_factory=list)
    sample: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.task.id}#{self.sample}@{len(self.prefix)}"


@dataclass
class _Live:
    episode: Episode
    traj: Trajectory
    sandbox: Sandbox


def _start(ep: Episode, tools: ToolConfig) -> _Live:
    sandbox = open_sandbox(tools, ep.task)
    traj = Trajectory(task_id=ep.task.id, steps=list(ep.prefix), meta={"sample": ep.sample, "prefix_len": len(ep.prefix), **ep.meta})
    cells = prefix_cells(ep.prefix)
    if cells:
        t0 = time.perf_counter()
        sandbox.replay(cells)
        traj.tool_time_s += time.perf_counter() - t0
    for s in ep.prefix:
        if s.final_answer is not None:  # a prefix that already answered is a finished episode
            traj.final_answer, traj.finished = s.final_answer, True
    return _Live(ep, traj, sandbox)


def _step_from_generation(gen: Generation, kind: str, keep_sampled: bool) -> Step:
    text = safe_text(gen.text)  # model text is data: kept as it will be stored
    parsed = parse_turn(text, kind)
    step = Step(kind=kind, thought=parsed.thought, code=parsed.code, author="student", n_tokens=len(gen.token_ids))
    if keep_sampled and gen.token_ids:
        step.sampled_ids = list(gen.token_ids)
        step.sampled_logprobs = list(gen.logprobs) if len(gen.logprobs) == len(gen.token_ids) else None
    if parsed.error is not None:
        step.parse_error = parsed.error
        step.raw = text
        step.observation = format_observation("", parse_error=parsed.error)
    return step


def _execute(live: _Live, step: Step, tools: ToolConfig) -> None:
    """Run an action step in its trajectory's sandbox and fill in its observation."""
    live.traj.tool_time_s += run_action(live.sandbox, step, tools.sandbox.timeout_s)


def _over(traj: Trajectory, config: RolloutConfig) -> bool:
    """Whether the episode has ended: answered, out of turns, or out of format."""
    if traj.finished or len(traj.steps) >= config.turn_budget:
        return True
    k = config.max_format_errors
    if k > 0 and len(traj.steps) >= k and all(s.parse_error is not None for s in traj.steps[-k:]):
        traj.meta["stopped"] = "format_errors"
        return True
    if config.max_repeats > 0 and repeats(traj.steps) >= config.max_repeats:
        traj.meta["stopped"] = "repeats"
        return True
    return False


def repeats(steps: list[Step]) -> int:
    """How many of the last consecutive actions repeat an earlier action: same code, same
    observation (so the repeat brought no new information).

    >>> a = Step(kind="action", thought="t", code="x = y", observation="NameError")
    >>> b = Step(kind="action", thought="u", code="print(1)", observation="1")
    >>> repeats([Step(kind="plan", thought="p"), a, b, a, a]), repeats([a, a, b]), repeats([a, b, b, a])
    (2, 0, 2)
    """
    seen: set[tuple[str, str]] = set()
    count = 0
    for s in steps:
        key = (s.code, s.observation)
        count = count + 1 if s.kind == "action" and key in seen else 0
        if s.kind == "action":
            seen.add(key)
    return count


def _finish(live: _Live, model: ChatModel) -> Trajectory:
    # Which isolation model code had, and why not namespaces when it fell back: per record,
    # so a run's report can say how many trajectories ran with less.
    live.traj.meta["sandbox"] = live.sandbox.isolation_record
    live.sandbox.close()
    model.release(live.episode.key)
    return live.traj


def rollout(model: ChatModel, episodes: list[Episode], tools: ToolConfig, config: RolloutConfig,
            on_done: Callable[[int, Trajectory], None] | None = None, keep_sampled: bool = False) -> list[Trajectory]:
    """Run every episode to its end; returns trajectories in the order of `episodes`.
    `on_done(index, trajectory)` is called as each one finishes (for progress and for
    writing results as they come). `keep_sampled` keeps each generated step's sampled token
    ids and log-probs on the step (`Step.sampled_ids`), for RL to train on."""
    if config.batch_size < 1 or config.turn_budget < 1:
        raise ValueError(f"batch_size and max_turns must be >= 1, got {config.batch_size} and {config.turn_budget}")
    results: list[Trajectory | None] = [None] * len(episodes)
    for i, traj in _run(model, episodes, tools, config, keep_sampled):
        results[i] = traj
        if on_done is not None:
            on_done(i, traj)
    return [r for r in results if r is not None]


def _run(model: ChatModel, episodes: list[Episode], tools: ToolConfig, config: RolloutConfig,
         keep_sampled: bool) -> Iterator[tuple[int, Trajectory]]:
    """Keep up to `batch_size` episodes alive. Each moves on its own: its sandbox opens, its
    turn is requested from the model's stream, its action runs in a thread, its next turn is
    requested, and so on; no episode waits for another's turn to end."""
    queue = list(enumerate(episodes))[::-1]  # pop() from the end keeps the original order
    params = SamplingParams(temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens,
                            stop=STOP_STRINGS)
    stream = model.open_stream(params, config.batch_size)
    system = system_prompt(tools.fetch.enabled)
    live: dict[int, _Live] = {}
    work: dict[Future, tuple[str, int]] = {}  # sandbox starts and tool calls in flight

    def next_turn(i: int, s: _Live) -> Iterator[tuple[int, Trajectory]]:
        if _over(s.traj, config):
            del live[i]
            yield i, _finish(s, model)
        else:
            stream.add(i, _request(s, len(s.traj.steps), config, system))

    with ThreadPoolExecutor(max_workers=max(1, config.batch_size)) as pool:
        try:
            while queue or live or work:
                while queue and len(live) + _starting(work) < config.batch_size:
                    i, ep = queue.pop()
                    work[pool.submit(_start, ep, tools)] = ("start", i)
                ready = _ready(work, stream)
                for fut in ready:
                    kind, i = work.pop(fut)
                    if kind == "start":
                        live[i] = fut.result()
                    else:
                        fut.result()  # re-raises our own bugs; model errors are already observations
                        _close_step(live[i])
                    yield from next_turn(i, live[i])
                for i, gen in stream.step() if stream.busy else []:
                    s = live[i]
                    step = _absorb(s, gen, keep_sampled)
                    if step.kind == "action" and step.parse_error is None:
                        work[pool.submit(_execute, s, step, tools)] = ("tool", i)
                    else:
                        yield from next_turn(i, s)
        finally:
            for state in live.values():
                state.sandbox.close()
            for fut, (kind, _) in work.items():
                if kind == "start" and fut.exception() is None:  # waits for a start in flight
                    fut.result().sandbox.close()


def _ready(work: dict[Future, tuple[str, int]], stream: TurnStream) -> list[Future]:
    """The threads' finished work. A stream that rows can join mid-generation is polled
    between decoding steps, and waited on only when it has nothing to do; one that serves a
    batch at a time gets every live episode at once (lockstep turns, as remote servers
    batch best)."""
    if not stream.continuous:
        return list(wait(work).done)
    if stream.busy:
        return [f for f in work if f.done()]
    return list(wait(work, return_when=FIRST_COMPLETED).done)


def _starting(work: dict[Future, tuple[str, int]]) -> int:
    return sum(kind == "start" for kind, _ in work.values())


def _request(s: _Live, turn: int, config: RolloutConfig, system: str) -> GenRequest:
    ep = s.episode
    seed = derive_seed(config.seed, config.stage, ep.task.id, ep.sample, turn)
    return GenRequest(to_messages(ep.task.question, s.traj.steps, system=system), cache_key=ep.key, seed=seed)


def _absorb(s: _Live, gen: Generation, keep_sampled: bool) -> Step:
    """Append the generated turn to the trajectory, with its accounting."""
    step = _step_from_generation(gen, next_kind(s.traj.steps), keep_sampled)
    s.traj.steps.append(step)
    s.traj.generated_tokens += len(gen.token_ids)
    s.traj.prompt_tokens += gen.prompt_tokens
    s.traj.model_time_s += gen.time_s
    return step


def _close_step(s: _Live) -> None:
    """After a step's action ran: a `final_answer` call ends the episode."""
    last = s.traj.steps[-1]
    if last.final_answer is not None:
        s.traj.final_answer, s.traj.finished = last.final_answer, True
