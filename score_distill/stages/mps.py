"""Mentored Problem-Solving (SCoRe stage 1): the student acts, the teacher fixes its first
critical error, the student carries on from the fix.

For each task:
1. the student rolls out a full trajectory (sampling seeded per (stage, task, sample, turn));
2. if its final answer scores wrong (`tasks.scoring.score_answer`, the scorer evaluation and
   RL rewards use), the teacher judges it and names the first critical error k;
3. the teacher writes one replacement for step k. It runs in a FRESH sandbox that replays
   the successful cells of the verified prefix steps[:k], never in the state left by the
   discarded steps, and gets its observation in the one observation format;
4. the student continues from prefix + fixed step up to the turn budget (`rollout.max_turns`);
   a fixed step that calls final_answer ends the episode;
5. 2-4 repeat up to `max_interventions` times. A trajectory that ends correct is "solved",
   one that never does is "hard_to_teach". A failed judge or repair (`TeacherFailure`, a
   step out of range, "no error" in a wrong trajectory, a malformed step) marks the task
   "teacher_failed" with its reason: recorded, never dropped.
6. A teacher call whose endpoint failed after the client's retries (`ModelError`: down,
   5xx, timeouts, garbage) also marks the task "teacher_failed", with a reason starting
   "teacher_unavailable", and the other tasks go on. `teacher_down_after` such failures in
   a row stop the run with `TeacherDown` (teachers/health.py; the command prints one line
   and exits 3); tasks in flight whose calls were not made are left unrecorded.

Work moves in rounds: every task in flight gets its rollout in ONE `rollout()` call (the
student generates for all of them together), then the teacher phase runs in threads. A
task's result depends only on its own seeds and teacher replies, never on which tasks share
a round, so a resumed run equals an uninterrupted one.

Output directory:
- `records.jsonl`: the source of truth, one `MentorRecord` per finished task, appended with
  one write + fsync (`RecordLog`). Killed at any moment and started again, a run cuts a torn
  last line, skips finished tasks and redoes only those in flight (their teacher calls hit
  the LLM teacher's content cache). Teacher calls and tokens are stored per task, so totals
  never count work repeated after a crash. A "teacher_unavailable" record is the one kind
  a rerun redoes (the server's fault is no result): a later line for the task replaces it;
- `mps_trajectories.jsonl`: every task's final trajectory, kept or not, with
  `meta["status"]`, `meta["interventions"]` and each step's author;
- `keysteps.jsonl`: one `KeyStepItem` per intervention of a solved task whose fix survives
  in the final trajectory (a later fix at an earlier step discards it): prefix = the
  verified steps before k, chosen = the teacher's step and rejected = the student's step,
  each with its observation, meta {"intervention" (1-based), "analysis", "suggestion",
  "step_index"};
- `summary.json` (printed by the command) and `config.yaml`. All but `records.jsonl` are
  rebuilt from it at the end. The SFT/RL split of the records is the next stage
  (`stages/split.py`; the `mentor` command runs it into `export/`).

    from score_distill.stages.mps import MentorConfig, mentor
    summary = mentor(student_model, teacher, tasks, "runs/mps", MentorConfig())
    score-distill mentor --student smollm2-135m --teacher reference --tasks math:train --out runs/mps
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from score_distill.agent.rollout import Episode, RolloutConfig, rollout
from score_distill.agent.steps import execute_steps, step_problem
from score_distill.config import option
from score_distill.models.base import ChatModel, ModelError
from score_distill.rundir import resume_stage
from score_distill.storage import atomic_write_json
from score_distill.teachers.base import Teacher
from score_distill.teachers.health import UNAVAILABLE, TeacherDown, TeacherHealth, unreachable
from score_distill.teachers.llm import TeacherFailure
from score_distill.tools.config import ToolConfig
from score_distill.types import Intervention, KeyStepItem, MentorRecord, Step, Task, Trajectory, write_jsonl

def mps_rollout_config() -> RolloutConfig:
    """The MPS sampling defaults (T=0.6, top-p 0.95, as in the reference release)."""
    return RolloutConfig(temperature=0.6, top_p=0.95, stage="mps")


@dataclass
class MentorConfig:
    max_interventions: int = option(3, "teacher fixes per task before it is marked hard to teach")
    teacher_concurrency: int = option(8, "teacher calls (judge, repair, fix execution) run at once")
    max_in_flight: int = option(256, "tasks worked on at once; they move through rounds together")
    teacher_down_after: int = option(
        5, "stop the run (exit 3, one line) after this many teacher calls in a row fail at the endpoint, "
           "after the client's own retries (0: never stop). Such a task is recorded as teacher_failed "
           "(teacher_unavailable) and the others go on; rerunning the same command resumes and retries those tasks")
    rollout: RolloutConfig = field(default_factory=mps_rollout_config, metadata={"help": "student sampling and turn budget"})
    tools: ToolConfig = field(default_factory=ToolConfig, metadata={"help": "sandbox and search"})


# Settings that change speed, not results: a run may be resumed with other values.
RESUME_FREE = ("teacher_concurrency", "max_in_flight", "teacher_down_after", "rollout.batch_size")


@dataclass
class _Work:
    """One task in flight: its latest trajectory and what the teacher did so far."""

    task: Task
    prefix: list[Step] = field(default_factory=list)  # where the next rollout starts
    steps: list[Step] = field(default_factory=list)  # the latest trajectory's steps
    final_answer: str | None = None
    interventions: list[Intervention] = field(default_factory=list)
    prefixes: list[list[Step]] = field(default_factory=list)  # verified prefix of each intervention
    status: str | None = None
    reason: str | None = None
    teacher_calls: int = 0
    teacher_tokens: int = 0
    gen_tokens: int = 0
    prompt_tokens: int = 0
    model_time_s: float = 0.0
    tool_time_s: float = 0.0

    def absorb(self, traj: Trajectory) -> None:
        self.steps, self.final_answer = traj.steps, traj.final_answer
        self.gen_tokens += traj.generated_tokens
        self.prompt_tokens += traj.prompt_tokens
        self.model_time_s += traj.model_time_s
        self.tool_time_s += traj.tool_time_s


FAILED = "teacher_failed"


def retryable(record: MentorRecord) -> bool:
    """Whether a rerun redoes this task: its teacher could not be reached."""
    return unreachable(record.status, record.reason)


def _teach(w: _Work, teacher: Teacher, cfg: MentorConfig, health: TeacherHealth) -> tuple[str, str | None] | None:
    """The teacher phase of one task: score the latest trajectory, judge it, repair the
    first error and run the fix. Returns (status, reason) when the task is finished, None
    when the student carries on from the fix. Raises `TeacherDown` (the task unfinished)
    once the endpoint is down."""
    while True:
        if w.task.score(w.final_answer).correct:
            return "solved", None
        if len(w.interventions) >= cfg.max_interventions:
            return "hard_to_teach", None
        w.teacher_calls += 1
        try:
            verdict = health.call(lambda: teacher.judge(w.task, w.steps))
        except TeacherFailure as e:
            w.teacher_tokens += e.tokens  # failed attempts cost tokens too
            return FAILED, f"judge_failed: {e}"
        except ModelError as e:  # the server's fault (after its retries): data, the others go on
            return FAILED, f"{UNAVAILABLE}: judge: {e}"
        w.teacher_tokens += verdict.tokens
        if verdict.correct:
            return FAILED, "judge_no_error: the judge found no error in a wrong trajectory"
        k = verdict.first_error
        if k is None or not 0 <= k < len(w.steps):
            return FAILED, f"judge_out_of_range: step {k} of a {len(w.steps)}-step trajectory"
        prefix, mistaken = w.steps[:k], w.steps[k]
        w.teacher_calls += 1
        try:
            proposed = health.call(lambda: teacher.repair(w.task, prefix, mistaken, verdict))
        except TeacherFailure as e:
            w.teacher_tokens += e.tokens
            return FAILED, f"repair_failed: {e}"
        except ModelError as e:
            return FAILED, f"{UNAVAILABLE}: repair: {e}"
        w.teacher_tokens += proposed.n_tokens
        problem = step_problem(proposed, k)
        if problem is not None:
            return FAILED, f"repair_malformed: {problem}"
        # The fix runs in a FRESH sandbox holding the verified prefix's state, never in the
        # state the discarded steps left.
        fixed = execute_steps(w.task, [proposed], cfg.tools, prefix=prefix)[0]
        w.interventions.append(Intervention(k, mistaken, fixed, verdict.analysis, verdict.suggestion))
        w.prefixes.append(prefix)
        w.prefix = prefix + [fixed]
        if fixed.final_answer is None and len(w.prefix) < cfg.rollout.turn_budget:
            return None  # the student carries on in the next round
        # The episode ended at the fix (it answered, or the turn budget is spent).
        w.steps, w.final_answer = w.prefix, fixed.final_answer


def _record(w: _Work) -> MentorRecord:
    """The finished task as one record (final trajectory, interventions, key steps)."""
    assert w.status is not None
    t = w.task
    score = t.score(w.final_answer)
    meta = {"status": w.status, "interventions": len(w.interventions), "correct": bool(score.correct)}
    if w.reason:
        meta["reason"] = w.reason
    traj = Trajectory(task_id=t.id, steps=w.steps, final_answer=w.final_answer, finished=w.final_answer is not None,
                      score=float(score.value), prompt_tokens=w.prompt_tokens, generated_tokens=w.gen_tokens,
                      model_time_s=round(w.model_time_s, 4), tool_time_s=round(w.tool_time_s, 4), meta=meta)
    keysteps = []
    for i, (iv, prefix) in enumerate(zip(w.interventions, w.prefixes), start=1):
        k = iv.step_index
        # Final success verifies only the fixes that are still in the trajectory.
        if w.status == "solved" and k < len(w.steps) and w.steps[k] == iv.fixed:
            keysteps.append(KeyStepItem(task_id=t.id, question=t.question, answer=t.answer, suite=t.suite,
                                        prefix=prefix, chosen=iv.fixed, rejected=iv.mistaken,
                                        meta={"intervention": i, "analysis": iv.analysis,
                                              "suggestion": iv.suggestion, "step_index": k}))
    return MentorRecord(task_id=t.id, question=t.question, answer=t.answer, suite=t.suite, status=w.status,
                        trajectory=traj, interventions=w.interventions, keysteps=keysteps, reason=w.reason,
                        teacher_calls=w.teacher_calls, teacher_tokens=w.teacher_tokens, student_tokens=w.gen_tokens)


def _rounds(student: ChatModel, teacher: Teacher, tasks: list[Task], cfg: MentorConfig,
            pool: ThreadPoolExecutor, health: TeacherHealth) -> Iterator[MentorRecord]:
    """Move tasks through rollout/teacher rounds; yield each record as its task finishes.
    Once the teacher is down, the round's finished tasks are yielded, then `TeacherDown`."""
    queue = list(tasks)[::-1]
    active: list[_Work] = []
    rnd = 0
    while queue or active:
        while queue and len(active) < cfg.max_in_flight:
            active.append(_Work(queue.pop()))
        rnd += 1
        episodes = [Episode(w.task, prefix=w.prefix) for w in active]
        for w, traj in zip(active, rollout(student, episodes, cfg.tools, cfg.rollout)):
            w.absorb(traj)
        futures = {pool.submit(_teach, w, teacher, cfg, health): w for w in active}
        for fut in as_completed(futures):
            try:
                outcome = fut.result()  # our bugs raise here; the teacher's mistakes are outcomes
            except TeacherDown:
                continue  # a call not made: the task is unfinished, a rerun does it
            if outcome is not None:
                w = futures[fut]
                w.status, w.reason = outcome
                yield _record(w)
        if health.down:
            raise TeacherDown(health.describe())
        active = [w for w in active if w.status is None]
        tqdm.write(f"mps round {rnd} | in flight {len(active)} | queued {len(queue)}", file=sys.stderr)


def mps_summary(records: list[MentorRecord]) -> dict:
    """The summary of finished tasks (wall time is added by the caller).

    >>> s = mps_summary([])
    >>> s["tasks"], s["solved_by_interventions"], s["first_error_step_hist"]
    (0, {'0': 0, '1': 0, '2+': 0}, {})
    """
    solved = {"0": 0, "1": 0, "2+": 0}
    hist: Counter[int] = Counter()
    reasons: Counter[str] = Counter()
    for r in records:
        hist.update(iv.step_index for iv in r.interventions)
        if r.status == "solved":
            solved[str(min(len(r.interventions), 2)).replace("2", "2+")] += 1
        if r.reason:
            reasons[r.reason.split(":", 1)[0]] += 1
    by_status = Counter(r.status for r in records)
    return {
        "tasks": len(records),
        "solved_by_interventions": solved,
        "hard_to_teach": by_status["hard_to_teach"],
        "first_error_step_hist": {str(k): hist[k] for k in sorted(hist)},
        "teacher_calls": sum(r.teacher_calls for r in records),
        "teacher_tokens": sum(r.teacher_tokens for r in records),
        "student_tokens": sum(r.student_tokens for r in records),
        "wall_time_s": 0.0,
        "solved": by_status["solved"],
        "teacher_failed": by_status["teacher_failed"],
        "teacher_unavailable": sum(retryable(r) for r in records),
        "teacher_failure_reasons": dict(sorted(reasons.items())),
        "keysteps": sum(len(r.keysteps) for r in records),
        "discarded_fixes": sum(len(r.interventions) - len(r.keysteps) for r in records if r.status == "solved"),
    }


def write_outputs(records: list[MentorRecord], out: Path) -> dict:
    """Rebuild the derived files from the records (in task order); returns the summary."""
    write_jsonl(out / "mps_trajectories.jsonl", [r.trajectory for r in records])
    write_jsonl(out / "keysteps.jsonl", [k for r in records for k in r.keysteps])
    return mps_summary(records)


def mentor(student: ChatModel, teacher: Teacher, tasks: list[Task], out_dir: str | Path,
           cfg: MentorConfig, resume_free: tuple[str, ...] = RESUME_FREE) -> dict:
    """Run MPS on `tasks` into `out_dir` (resuming from its records); returns the summary."""
    out = Path(out_dir)
    health = TeacherHealth(cfg.teacher_down_after)  # checks the limit before anything is written
    stage = resume_stage(out, cfg, resume_free, MentorRecord, [t.id for t in tasks], redo=retryable)
    log, done = stage.log, stage.done
    t0 = time.perf_counter()
    todo_ids = set(stage.todo)
    todo = [t for t in tasks if t.id in todo_ids]
    retried = sum(t.id in done for t in todo)
    if retried:
        tqdm.write(f"mps: retrying {retried} tasks whose teacher could not be reached before", file=sys.stderr)
    try:
        with tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc="mps", unit="task") as bar, \
                ThreadPoolExecutor(max_workers=max(1, cfg.teacher_concurrency)) as pool:
            for record in _rounds(student, teacher, todo, cfg, pool, health):
                log.append(record)
                done[record.task_id] = record
                bar.update(1)
    except TeacherDown as e:
        left = sum(t.id not in done or retryable(done[t.id]) for t in tasks)
        raise TeacherDown(f"{e}; stopped with {len(tasks) - left} of {len(tasks)} tasks done: rerun the same "
                          f"command when the teacher is back, it resumes and retries the other {left}") from None
    summary = write_outputs([done[t.id] for t in tasks], out)
    summary["wall_time_s"] = round(time.perf_counter() - t0, 2)
    summary["resumed_tasks"] = len(tasks) - len(todo)
    if summary["teacher_unavailable"]:
        tqdm.write(f"mps: {summary['teacher_unavailable']} tasks could not reach the teacher (teacher_unavailable); "
                   "rerun the same command to retry them", file=sys.stderr)
    # What this process spent (cache hits excluded); the totals above are per-task sums.
    summary["teacher_usage_this_run"] = {"calls": teacher.usage.calls, "tokens": teacher.usage.tokens,
                                         "by_op": dict(teacher.usage.by_op)}
    atomic_write_json(out / "summary.json", summary)
    return summary
