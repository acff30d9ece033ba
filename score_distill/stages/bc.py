"""Cold-start BC data (SCoRe stage 0): the teacher solves a fraction of the training tasks,
and only its correct solutions are kept (rejection sampling).

1. A seeded shuffle of the task ids picks `fraction` of them (20% by default: enough for the
   student to learn the CodeAct loop, not enough to stop it making informative mistakes).
   The chosen ids go to `chosen_ids.json` before any work starts; `score-distill mentor
   --exclude DIR` leaves them out of MPS.
2. The teacher solves each chosen task (`Teacher.solve`, concurrently). Whatever the
   teacher, its steps are executed again in a fresh sandbox built from the shared tool
   configuration, stopping at the first `final_answer`, so every observation is a real one
   in the one observation format. A teacher whose steps came with observations that differ
   from the re-execution is rejected ("observation_mismatch"): its later thoughts read
   outputs the student would never see.
3. A solution is kept when its final answer scores correct. Otherwise it is rejected with a
   reason: "wrong_answer", "no_answer", "malformed" (a step that does not render and parse
   back cleanly, or plan/action out of order), "too_long" (more than `max_turns` steps),
   "observation_mismatch". A `TeacherFailure` marks the task "teacher_failed"; so does an
   endpoint that fails after the client's retries (reason `teacher_unavailable: ...`, see
   teachers/health.py): the other tasks go on, a rerun retries those tasks, and
   `teacher_down_after` such failures in a row stop the run with `TeacherDown`.

Output directory (resumable exactly like MPS, see `rundir.resume_records`):
- `records.jsonl`: one `BCRecord` per chosen task (kept or not), fsynced per line;
- `bc_trajectories.jsonl`: the kept `Trajectory` records (steps authored "teacher"), in task
  order, with `meta["question"]`, so `exports.read_sft_examples` reads them;
- `chosen_ids.json`, `summary.json` (printed at the end), `config.yaml`, and `export/`: the
  kept set as TRL and LLaMA-Factory files (`exports.export_sft`).

    from score_distill.stages.bc import BCConfig, collect_bc
    summary = collect_bc(teacher, tasks, "runs/bc", BCConfig())

or `score-distill bc --teacher reference --tasks math:train --n 200 --out runs/bc`.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from score_distill.agent.steps import execute_steps, step_problem
from score_distill.config import option
from score_distill.exports import SFTExample, export_sft
from score_distill.models.base import ModelError
from score_distill.rundir import resume_stage
from score_distill.seeds import derive_seed
from score_distill.storage import atomic_write_json
from score_distill.teachers.base import Teacher
from score_distill.teachers.health import UNAVAILABLE, TeacherHealth, unreachable
from score_distill.teachers.llm import TeacherFailure
from score_distill.tools.config import ToolConfig
from score_distill.types import BCRecord, Step, Task, Trajectory, write_jsonl


@dataclass
class BCConfig:
    seed: int = option(0, "seed of the choice of tasks")
    fraction: float = option(0.2, "share of the tasks the teacher solves")
    max_turns: int = option(8, "longest solution kept, in assistant turns (the plan included)")
    teacher_concurrency: int = option(8, "tasks solved at once")
    teacher_down_after: int = option(5, "stop the run (resumable) after this many teacher calls in a row failed at "
                                        "the endpoint; such tasks are marked and retried by a rerun (0 = never stop)")
    tools: ToolConfig = field(default_factory=ToolConfig, metadata={"help": "sandbox and search"})


RESUME_FREE = ("teacher_concurrency", "teacher_down_after")


def choose_tasks(task_ids: list[str], fraction: float, seed: int) -> list[str]:
    """The ids the teacher solves: a seeded shuffle, the first `fraction` of it, returned
    in the input order.

    >>> ids = [f"t{i}" for i in range(10)]
    >>> chosen = choose_tasks(ids, 0.2, seed=0)
    >>> len(chosen), chosen == choose_tasks(ids, 0.2, seed=0), set(chosen) <= set(ids)
    (2, True, True)
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    shuffled = sorted(task_ids)
    random.Random(derive_seed("bc-choice", seed)).shuffle(shuffled)
    chosen = set(shuffled[: round(fraction * len(shuffled))])
    return [i for i in task_ids if i in chosen]


def solution_problem(steps: list[Step], max_turns: int) -> str | None:
    """Why a solution cannot be training data, before running it (None when it can).

    >>> plan, act = Step(kind="plan", thought="p"), Step(kind="action", thought="t", code="final_answer(1)")
    >>> solution_problem([plan, act], 8) is None, solution_problem([act], 8)
    (True, 'malformed: step 0 is action, expected plan')
    """
    if len(steps) > max_turns:
        return f"too_long: {len(steps)} steps, the budget is {max_turns}"
    for i, s in enumerate(steps):
        problem = step_problem(s, i)
        if problem is not None:
            return f"malformed: {problem}"
    return None


def retryable(record: BCRecord) -> bool:
    """Whether a rerun redoes this task: its teacher could not be reached."""
    return unreachable(record.status, record.reason)


def solve_one(teacher: Teacher, task: Task, cfg: BCConfig, health: TeacherHealth | None = None) -> BCRecord:
    """Solve, re-execute and check one task. Raises `TeacherDown` once `health` says the
    teacher's endpoint is down."""
    proposed: list[Step] = []

    def record(status: str, steps: list[Step], reason: str | None = None, answer: str | None = None,
               spent: int | None = None) -> BCRecord:
        score = task.score(answer)
        tokens = sum(s.n_tokens for s in proposed) if spent is None else spent
        traj = Trajectory(task_id=task.id, steps=steps, final_answer=answer, finished=answer is not None,
                          score=float(score.value), generated_tokens=tokens,
                          meta={"question": task.question, "status": status, "correct": bool(score.correct)})
        return BCRecord(task.id, task.question, task.answer, task.suite, status, traj, reason,
                        teacher_calls=1, teacher_tokens=tokens)

    health = health if health is not None else TeacherHealth(0)
    try:
        proposed = health.call(lambda: teacher.solve(task))
    except TeacherFailure as e:  # its failed attempts still cost tokens
        return record("teacher_failed", [], f"teacher_failed: {e}", spent=e.tokens)
    except ModelError as e:  # the server's fault (after its retries): data, the others go on
        return record("teacher_failed", [], f"{UNAVAILABLE}: solve: {e}")
    steps = execute_steps(task, proposed, cfg.tools)
    answer = steps[-1].final_answer if steps else None
    problem = solution_problem(steps, cfg.max_turns)
    if problem is None:
        for i, (given, ran) in enumerate(zip(proposed, steps)):
            if given.observation and ran.kind == "action" and given.observation != ran.observation:
                problem = f"observation_mismatch: step {i}"
                break
    if problem is None and answer is None:
        problem = "no_answer: the solution never called final_answer"
    if problem is None and not task.score(answer).correct:
        problem = f"wrong_answer: {answer!r}"
    return record("rejected" if problem else "kept", steps, problem, answer)


def summarize_bc(records: list[BCRecord], n_tasks: int, fraction: float) -> dict:
    """Counts of a BC run (wall time is added by the caller).

    >>> summarize_bc([], 10, 0.2)["chosen"]
    0
    """
    status = Counter(r.status for r in records)
    reasons = Counter(r.reason.split(":", 1)[0] for r in records if r.status == "rejected" and r.reason)
    return {"tasks": n_tasks, "fraction": fraction, "chosen": len(records), "kept": status["kept"],
            "rejected": status["rejected"], "rejected_reasons": dict(sorted(reasons.items())),
            "teacher_failed": status["teacher_failed"], "teacher_unavailable": sum(map(retryable, records)),
            "teacher_calls": sum(r.teacher_calls for r in records),
            "teacher_tokens": sum(r.teacher_tokens for r in records), "wall_time_s": 0.0}


def collect_bc(teacher: Teacher, tasks: list[Task], out_dir: str | Path, cfg: BCConfig,
               resume_free: tuple[str, ...] = RESUME_FREE) -> dict:
    """Collect cold-start data into `out_dir` (resuming from its records); returns the summary."""
    out = Path(out_dir)
    health = TeacherHealth(cfg.teacher_down_after)  # checks the limit before anything is written
    chosen_ids = choose_tasks([t.id for t in tasks], cfg.fraction, cfg.seed)
    stage = resume_stage(out, cfg, resume_free, BCRecord, chosen_ids, redo=retryable)
    atomic_write_json(out / "chosen_ids.json", chosen_ids)
    log, done = stage.log, stage.done
    by_id = {t.id: t for t in tasks}
    todo = [by_id[i] for i in stage.todo]
    t0 = time.perf_counter()
    with tqdm(total=len(chosen_ids), initial=len(chosen_ids) - len(todo), desc="bc", unit="task") as bar, \
            ThreadPoolExecutor(max_workers=max(1, cfg.teacher_concurrency)) as pool:
        futures = [pool.submit(solve_one, teacher, t, cfg, health) for t in todo]
        for fut in as_completed(futures):
            record = fut.result()  # TeacherDown stops here: what was recorded stays, a rerun resumes
            log.append(record)
            done[record.task_id] = record
            bar.update(1)
    records = [done[i] for i in chosen_ids]
    kept = [r for r in records if r.status == "kept"]
    write_jsonl(out / "bc_trajectories.jsonl", [r.trajectory for r in kept])
    summary = summarize_bc(records, len(tasks), cfg.fraction)
    summary["export"] = export_sft([SFTExample(r.task_id, r.question, r.answer, r.suite, r.trajectory.steps)
                                    for r in kept], out / "export", name="bc")
    summary["wall_time_s"] = round(time.perf_counter() - t0, 2)
    summary["resumed_tasks"] = len(chosen_ids) - len(todo)
    summary["teacher_usage_this_run"] = {"calls": teacher.usage.calls, "tokens": teacher.usage.tokens,
                                         "by_op": dict(teacher.usage.by_op)}
    atomic_write_json(out / "summary.json", summary)
    return summary
