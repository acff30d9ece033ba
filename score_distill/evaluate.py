"""Evaluation harness: run a model on tasks with the shared rollout, score, summarise.

Writes into the output directory, as it goes:
- `trajectories.jsonl`: one scored `Trajectory` per (task, sample), appended as each finishes,
  so a killed run resumes where it stopped (finished pairs are not run again);
- `metrics.json`: accuracy with a 95% interval, turns, finish rate, tokens and wall time per
  task, and an error breakdown (see `metrics.summarize`);
- `config.yaml`: the resolved configuration.

    score-distill eval --model smollm2-135m --tasks math:test --n 50 --out runs/eval-math
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from score_distill.agent.rollout import Episode, RolloutConfig, rollout
from score_distill.config import option
from score_distill.metrics import summarize
from score_distill.models.base import ChatModel
from score_distill.tasks.scoring import Score, score_answer
from score_distill.tools.config import ToolConfig
from score_distill.types import Task, Trajectory, iter_jsonl, write_jsonl


@dataclass
class EvalConfig:
    model: str = option("smollm2-135m", "built-in name, local HF directory, or openai:<model>@<base-url>")
    tasks: str = option("math:test", "SUITE:SPLIT of a built-in suite, or a task JSONL file")
    n: int | None = option(None, "number of tasks (default: a suite's default size / the whole file)")
    samples: int = option(1, "samples per task (accuracy is over all samples)")
    seed: int = option(0, "seed of the task generator and of sampling")
    rollout: RolloutConfig = field(default_factory=RolloutConfig, metadata={"help": "agent loop"})
    tools: ToolConfig = field(default_factory=ToolConfig, metadata={"help": "sandbox and search"})


def score_trajectory(task: Task, traj: Trajectory) -> Score:
    """Score a trajectory's answer, attach the score to it (in place) and return it."""
    score = score_answer(task.suite, traj.final_answer, task.answer, task.question)
    traj.score = float(score.value)
    traj.meta["correct"] = bool(score.correct)
    if score.detail:
        traj.meta["score_detail"] = score.detail
    return score


def evaluate(model: ChatModel, tasks: list[Task], out_dir: str | Path, tools: ToolConfig,
             rollout_config: RolloutConfig, samples: int = 1, desc: str = "eval") -> dict:
    """Evaluate `model` on `tasks` (resuming from `out_dir/trajectories.jsonl`); returns and
    writes the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "trajectories.jsonl"
    by_id = {t.id: t for t in tasks}
    done: dict[tuple[str, int], Trajectory] = {}
    scores: dict[tuple[str, int], Score] = {}
    if path.exists():
        for t in iter_jsonl(path, Trajectory):
            key = (t.task_id, int(t.meta.get("sample", 0)))
            done[key] = t
            if t.task_id in by_id:
                scores[key] = score_trajectory(by_id[t.task_id], t)
        # rewrite without a possibly torn last line before appending
        write_jsonl(path, done.values())
    todo = [Episode(task, sample=k) for task in tasks for k in range(samples) if (task.id, k) not in done]
    t0 = time.perf_counter()
    with tqdm(total=len(tasks) * samples, initial=len(tasks) * samples - len(todo), desc=desc, unit="traj") as bar:
        def on_done(_: int, traj: Trajectory) -> None:
            key = (traj.task_id, int(traj.meta.get("sample", 0)))
            scores[key] = score_trajectory(by_id[traj.task_id], traj)
            write_jsonl(path, [traj], append=True)
            done[key] = traj
            bar.update(1)

        rollout(model, todo, tools, rollout_config, on_done=on_done)
    keys = [(t.id, k) for t in tasks for k in range(samples)]
    metrics = summarize([done[k] for k in keys], [scores[k] for k in keys])
    metrics["wall_time_s"] = round(time.perf_counter() - t0, 2)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
