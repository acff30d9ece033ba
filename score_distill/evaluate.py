"""Evaluation harness: run a model on tasks with the shared rollout, score, summarise.

Writes into the output directory, as it goes:
- `trajectories.jsonl`: one scored `Trajectory` per (task, sample), appended as each finishes,
  so a killed run resumes where it stopped (finished pairs are not run again);
- `metrics.json`: accuracy with a 95% interval, turns, finish rate, tokens and wall time per
  task, and an error breakdown (see `metrics.summarize`);
- `config.yaml` (written by the `eval` command): the resolved configuration. A rerun into
  the same directory resumes only under the same settings; otherwise the command refuses,
  naming the fields that differ (`rundir.check_run_dir`).

    score-distill eval --model smollm2-135m --tasks math:test --n 50 --out runs/eval-math
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from score_distill.agent.rollout import Episode, RolloutConfig, rollout
from score_distill.metrics import summarize
from score_distill.models.base import ChatModel
from score_distill.storage import atomic_write_json
from score_distill.tasks.scoring import Score, Scorer
from score_distill.tools.config import ToolConfig
from score_distill.types import Task, Trajectory, iter_jsonl, write_jsonl


def score_trajectory(task: Task, traj: Trajectory, scorer: Scorer | None = None) -> Score:
    """Score a trajectory's answer (the suite's way, or with `scorer`), attach the score to it
    (in place) and return it."""
    score = task.score(traj.final_answer, scorer)
    traj.score = float(score.value)
    traj.meta["correct"] = bool(score.correct)
    if score.detail:
        traj.meta["score_detail"] = score.detail
    return score


def evaluate(model: ChatModel, tasks: list[Task], out_dir: str | Path, tools: ToolConfig,
             rollout_config: RolloutConfig, samples: int = 1, desc: str = "eval", scorer: Scorer | None = None) -> dict:
    """Evaluate `model` on `tasks` (resuming from `out_dir/trajectories.jsonl`); returns and
    writes the metrics. `scorer` replaces the suites' own (an LLM judge)."""
    return evaluate_sets(model, {"": (tasks, Path(out_dir))}, tools, rollout_config, samples, desc, scorer)[""]


def evaluate_sets(model: ChatModel, sets: dict[str, tuple[list[Task], Path]], tools: ToolConfig,
                  rollout_config: RolloutConfig, samples: int = 1, desc: str = "eval",
                  scorer: Scorer | None = None) -> dict[str, dict]:
    """Evaluate several task sets in ONE rollout, so their episodes share the batches (a set
    of 12 tasks alone leaves most of a batch of 48 idle, and its slowest episode holds the
    batch up); each set keeps its own folder, files, resume and metrics. Task ids must be
    unique across the sets. `wall_time_s` in each set's metrics is the shared wall time."""
    owner: dict[str, str] = {}
    for name, (tasks, _) in sets.items():
        for t in tasks:
            if owner.setdefault(t.id, name) != name:
                raise ValueError(f"task id {t.id!r} is in both {owner[t.id]!r} and {name!r}")
    by_id = {t.id: t for tasks, _ in sets.values() for t in tasks}
    done: dict[tuple[str, int], Trajectory] = {}
    scores: dict[tuple[str, int], Score] = {}
    paths = {}
    for name, (tasks, out_dir) in sets.items():
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = paths[name] = out / "trajectories.jsonl"
        if path.exists():
            mine = {}
            for t in iter_jsonl(path, Trajectory):
                key = (t.task_id, int(t.meta.get("sample", 0)))
                if owner.get(t.task_id, name) != name:
                    continue  # a trajectory of a task this run gives to another set
                mine[key] = t
                if t.task_id in by_id:
                    scores[key] = score_trajectory(by_id[t.task_id], t, scorer)
            done.update(mine)
            # Rewritten (atomically: a kill here keeps the old file) without a torn last line
            # or another set's trajectories, before anything is appended.
            write_jsonl(path, mine.values())
    todo = [Episode(task, sample=k) for tasks, _ in sets.values() for task in tasks for k in range(samples)
            if (task.id, k) not in done]
    total = sum(len(tasks) for tasks, _ in sets.values()) * samples
    t0 = time.perf_counter()
    with tqdm(total=total, initial=total - len(todo), desc=desc, unit="traj") as bar:
        def on_done(_: int, traj: Trajectory) -> None:
            key = (traj.task_id, int(traj.meta.get("sample", 0)))
            scores[key] = score_trajectory(by_id[traj.task_id], traj, scorer)
            write_jsonl(paths[owner[traj.task_id]], [traj], append=True)
            done[key] = traj
            bar.update(1)

        rollout(model, todo, tools, rollout_config, on_done=on_done)
    wall = round(time.perf_counter() - t0, 2)
    results = {}
    for name, (tasks, out_dir) in sets.items():
        keys = [(t.id, k) for t in tasks for k in range(samples)]
        metrics = summarize([done[k] for k in keys], [scores[k] for k in keys])
        metrics["wall_time_s"] = wall
        atomic_write_json(Path(out_dir) / "metrics.json", metrics)
        results[name] = metrics
    return results
