"""Evaluation metrics: accuracy with a Wilson interval, cost per task and an error breakdown.

    scores = [task.score(t.final_answer) for t in trajs]
    metrics = summarize(trajs, scores)       # a JSON-ready dict, written to metrics.json
    print(metrics["accuracy"], metrics["ci95"])

`summarize` treats each trajectory as one attempt at a task; with K samples per task
(`--samples K`) there are K trajectories per task id. See its docstring for every key.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from score_distill.tasks.scoring import Score
from score_distill.types import Step, Trajectory


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for k successes out of n (95% for z=1.96). It stays inside
    [0, 1] and is sensible at k=0 or k=n, unlike the normal approximation. With n=0 nothing
    is known and the interval is the whole of [0, 1].

    >>> [round(x, 3) for x in wilson_interval(8, 10)]
    [0.49, 0.943]
    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    >>> all(lo <= k / n <= hi for n in range(1, 60) for k in range(n + 1) for lo, hi in [wilson_interval(k, n)])
    True
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Rounding can put a bound a hair past p itself (k=0 gave a lower bound of 3e-17):
    # the interval always contains the observed proportion.
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _tool_failed(step: Step) -> bool:
    """The step parsed, so its code ran, and the run raised or timed out."""
    return step.parse_error is None and (step.error is not None or step.timed_out)


def _errors(trajectories: list[Trajectory], scores: list[Score]) -> dict[str, int]:
    steps = [s for t in trajectories for s in t.steps]
    tool_failed = [s for s in steps if _tool_failed(s)]
    return {
        "no_final_answer": sum(t.final_answer is None for t in trajectories),
        "wrong_answer": sum(t.final_answer is not None and not s.correct for t, s in zip(trajectories, scores)),
        "judge_failed": sum(s.judge_failed for s in scores),
        "parse_error_steps": sum(s.parse_error is not None for s in steps),
        "tool_error_steps": len(tool_failed),
        "timed_out_steps": sum(s.timed_out for s in tool_failed),
        "trajectories_with_parse_error": sum(any(s.parse_error is not None for s in t.steps) for t in trajectories),
        "trajectories_with_tool_error": sum(any(_tool_failed(s) for s in t.steps) for t in trajectories),
    }


def sandbox_isolation(trajectories: list[Trajectory]) -> dict[str, dict[str, int]]:
    """How many trajectories ran under each sandbox isolation, and how many fell back from
    namespaces for each cause (from `meta["sandbox"]`, written by the rollout; a record
    without it, from before it was kept, counts as "unrecorded").

    >>> fell = Trajectory(task_id="a", meta={"sandbox": {"isolation": "process", "fallback": "slow"}})
    >>> sandbox_isolation([fell, Trajectory(task_id="b", meta={"sandbox": {"isolation": "namespaces"}})])
    {'isolation': {'namespaces': 1, 'process': 1}, 'fallbacks': {'slow': 1}}
    """
    modes: dict[str, int] = defaultdict(int)
    causes: dict[str, int] = defaultdict(int)
    for t in trajectories:
        record = t.meta.get("sandbox")
        record = record if isinstance(record, dict) else {}
        modes[str(record.get("isolation", "unrecorded"))] += 1
        if record.get("fallback"):
            causes[str(record["fallback"])] += 1
    return {"isolation": dict(sorted(modes.items())), "fallbacks": dict(sorted(causes.items()))}


def summarize(trajectories: list[Trajectory], scores: list[Score]) -> dict[str, Any]:
    """The evaluation metrics of scored trajectories (`scores[i]` scores `trajectories[i]`).

    Every trajectory is one attempt (one sample) at its task. Keys:
    - `n`: attempts; `n_tasks`: distinct task ids; `samples_per_task`: the largest number of
      attempts at one task (K of `--samples K`).
    - `accuracy`: the fraction of attempts whose score is `correct`, over all samples;
      `ci95`: its 95% Wilson interval [lo, hi]; `mean_score`: the mean `Score.value` (token F1
      for search suites, so partial credit shows).
    - `pass_at_k` (only when some task has K > 1 attempts): {"k", "rate", "ci95", "n"}, the
      fraction of tasks with at least one correct attempt among their samples (the empirical
      "any correct" rate over the samples drawn, not an unbiased pass@k estimate for k < K).
    - `mean_turns`: mean number of steps (the plan counts as one).
    - `finish_rate`: the fraction of attempts that ended by calling final_answer
      (`Trajectory.finished`); the others ran out of turns or tokens.
    - `tokens_per_task`: mean {"generated", "prompt"} tokens per attempt.
    - `time_per_task_s`: mean {"model", "tool", "total"} seconds per attempt, where total =
      model + tool (time spent elsewhere, such as waiting for a batch, is not counted).
    - `errors`: counts over attempts: `no_final_answer` (final_answer is None),
      `wrong_answer` (an answer was given and is not correct), `judge_failed` (an LLM judge
      never gave a valid verdict; these are also counted as wrong); and counts over steps:
      `parse_error_steps` (steps with `parse_error`: nothing was run), `tool_error_steps`
      (parsed steps whose code raised or timed out: `error` set or `timed_out`),
      `timed_out_steps` (the timed-out part of those); plus
      `trajectories_with_parse_error` / `trajectories_with_tool_error`.
    - `sandbox`: trajectories per sandbox isolation and fallbacks per cause (`sandbox_isolation`).
    With no trajectories, rates are 0 and the interval is [0, 1].

    >>> t = Trajectory(task_id="a", steps=[Step(kind="plan", thought="p")], final_answer="3", finished=True)
    >>> m = summarize([t], [Score(1.0, True)])
    >>> m["accuracy"], m["finish_rate"], m["errors"]["wrong_answer"]
    (1.0, 1.0, 0)
    """
    if len(trajectories) != len(scores):
        raise ValueError(f"{len(trajectories)} trajectories but {len(scores)} scores")
    n = len(trajectories)
    n_correct = sum(s.correct for s in scores)
    lo, hi = wilson_interval(n_correct, n)
    by_task: dict[str, list[bool]] = defaultdict(list)
    for t, s in zip(trajectories, scores):
        by_task[t.task_id].append(s.correct)
    k = max((len(v) for v in by_task.values()), default=0)
    model = [t.model_time_s for t in trajectories]
    tool = [t.tool_time_s for t in trajectories]
    out: dict[str, Any] = {
        "n": n,
        "n_tasks": len(by_task),
        "samples_per_task": k,
        "accuracy": n_correct / n if n else 0.0,
        "ci95": [lo, hi],
        "mean_score": _mean([float(s.value) for s in scores]),
        "mean_turns": _mean([float(t.n_turns) for t in trajectories]),
        "finish_rate": _mean([float(t.finished) for t in trajectories]),
        "tokens_per_task": {"generated": _mean([float(t.generated_tokens) for t in trajectories]),
                            "prompt": _mean([float(t.prompt_tokens) for t in trajectories])},
        "time_per_task_s": {"model": _mean(model), "tool": _mean(tool),
                            "total": _mean([m + u for m, u in zip(model, tool)])},
        "errors": _errors(trajectories, scores),
        "sandbox": sandbox_isolation(trajectories),
    }
    if k > 1:
        any_correct = sum(any(v) for v in by_task.values())
        out["pass_at_k"] = {"k": k, "rate": any_correct / len(by_task),
                            "ci95": list(wilson_interval(any_correct, len(by_task))), "n": len(by_task)}
    return out
