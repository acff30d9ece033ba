"""The teacher audit: how well a teacher does what SCoRe asks of it, measured on trajectories
whose first critical error is known (teachers/planted.py).

    audit(make_teacher, AuditConfig(suite="math", n=50), out="runs/audit-math")
    score-distill audit-teacher --teacher openai:M@URL --suite math --n 50 --out runs/audit-math

Each of the n generated tasks gives two trajectories, executed in the sandbox: a correct one
and one with an error planted at a known step k. The teacher:
1. judges both (a correct verdict on the first is right; on the second, the step it blames is
   compared with k);
2. repairs the planted one at k, given its own verdict when it blamed k, else a verdict that
   names k (so the repair is measured apart from the judgement). The repair runs in the
   sandbox state of steps 0..k-1, then the reference steps after k (the remainder), which
   must reach the gold answer, and the repaired step must run without an error (one that
   fails fixes nothing, even where the remainder gets there alone); it is checked for answer
   leaks (leak.py);
3. says whether two steps taken after the same prefix are equivalent, for pairs settled by
   execution: the reference step at k against a rewording of it, and against the mistake.

Every teacher call goes through `TeacherHealth`. A call whose reply stayed unusable after the
teacher's retries (`TeacherFailure`) or whose endpoint failed (`ModelError`) is recorded in
the case as a failure and scored as a miss (teachers/audit_report.py); a case with an
endpoint failure is redone by a rerun, and `teacher_down_after` of them in a row stop the
audit (`TeacherDown`, exit 3). Each task gets its own teacher (`make_teacher()`), so the calls
and tokens recorded with a case are that case's own.

Writes OUT/cases.jsonl (one `AuditRecord` per trajectory, appended as tasks finish: a rerun
of the same command skips what is there), OUT/config.yaml, OUT/report.json and OUT/report.md.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, TypeVar

from score_distill.agent.format import render_step
from score_distill.agent.steps import execute_steps, step_problem
from score_distill.config import option
from score_distill.models.base import ModelError
from score_distill.rundir import RecordLog, open_run_dir
from score_distill.tasks.load import generate_suite
from score_distill.teachers.base import Teacher, Verdict
from score_distill.teachers.health import UNAVAILABLE, TeacherDown, TeacherHealth
from score_distill.teachers.leak import leaks_answer
from score_distill.teachers.llm import LLMTeacher, TeacherFailure
from score_distill.teachers.load import REFERENCE, load_teacher
from score_distill.teachers.planted import Case, SuitePlanting, audit_pair
from score_distill.teachers.planted_math import MathPlanting
from score_distill.teachers.planted_search import SearchPlanting
from score_distill.teachers.prompts import render_steps
from score_distill.tools.config import ToolConfig
from score_distill.types import Record, Step, Task

log = logging.getLogger(__name__)
T = TypeVar("T")
# Settings that change speed or when to give up, not results: a rerun may change them.
RESUME_FREE = ("concurrency", "teacher_down_after")


@dataclass
class AuditConfig:
    suite: Literal["math", "search"] = option("math", "the generated suite whose reference trajectories get "
                                                      "errors planted")
    n: int = option(50, "tasks; each gives a correct trajectory and one with a planted error")
    seed: int = option(0, "seed of the task generator (and the search world) and of the planting")
    split: Literal["train", "dev", "test", "ood"] = option("dev", "split of the generated suite")
    difficulty: dict[str, Any] = option({}, "generator settings of the suite, as YAML (math_suite.MathDifficulty, "
                                            "search_suite.Difficulty); math always has one quantity per step")
    concurrency: int = option(4, "tasks audited at once (their teacher calls in flight together)")
    teacher_down_after: int = option(5, "stop after this many teacher calls in a row failed at the endpoint "
                                        "(0: never); a rerun resumes")
    tools: ToolConfig = field(default_factory=ToolConfig, metadata={"help": "sandbox and search"})

    def __post_init__(self) -> None:
        if self.n < 1 or self.concurrency < 1:
            raise ValueError(f"n and concurrency must be at least 1 (got n={self.n}, concurrency={self.concurrency})")


@dataclass
class EquivalenceCheck(Record):
    """One equivalence question and the teacher's answer."""

    name: str                    # "reworded" or "mistaken" (teachers/planted.py)
    truth: bool
    said: bool | None = None     # None: the call failed
    failure: str | None = None


@dataclass
class AuditRecord(Record):
    """One audited trajectory: what was planted, what the teacher said, what its repair did."""

    case_id: str
    task_id: str
    suite: str
    kind: str
    planted_step: int | None     # None: a correct trajectory
    steps: list[Step]
    said_correct: bool | None = None   # None: the judge call failed
    said_step: int | None = None
    analysis: str = ""
    judge_failure: str | None = None
    repair: Step | None = None         # the teacher's step at the planted step, executed
    repair_from: str | None = None     # "teacher" (its verdict blamed the planted step) or "planted"
    repair_failure: str | None = None
    repair_answer: str | None = None   # the final answer after the repair and the reference remainder
    repair_solved: bool | None = None
    repair_leaks: bool | None = None
    equivalence: list[EquivalenceCheck] = field(default_factory=list)
    teacher_calls: int = 0
    teacher_tokens: int = 0

    _nested: ClassVar[dict[str, tuple[type, bool]]] = {
        "steps": (Step, True), "repair": (Step, False), "equivalence": (EquivalenceCheck, True)}

    @property
    def unavailable(self) -> bool:
        """Whether a call failed at the endpoint (a rerun redoes the case)."""
        failures = [self.judge_failure, self.repair_failure] + [e.failure for e in self.equivalence]
        return any(f is not None and f.startswith(UNAVAILABLE + ":") for f in failures)


def planting(suite: str) -> SuitePlanting:
    """The planting rules of a generated suite."""
    if suite == "math":
        return MathPlanting()
    if suite == "search":
        return SearchPlanting()
    raise ValueError(f"no planted errors for suite {suite!r}: the audit knows 'math' and 'search'")


def per_task_teachers(spec: str, tools: ToolConfig | None = None, **client_options: Any) -> Callable[[], Teacher]:
    """A maker of fresh teachers for `spec` (teachers/load.py), one per task so that each
    counts its own calls and tokens. LLM teachers share one client (one connection setup,
    one memory of what the endpoint refuses) and call without a cache, so every call is
    made and counted."""
    if spec == REFERENCE:
        return lambda: load_teacher(REFERENCE, **client_options)
    base = load_teacher(spec, tools=tools, **client_options)
    if not isinstance(base, LLMTeacher):
        raise ValueError(f"teacher {spec!r} is neither the reference nor an LLM teacher")  # our bug: load grew a kind
    return lambda: LLMTeacher(base.chat, base.model, base.config, tools=base.tools)


def audit_tasks(cfg: AuditConfig) -> list[Task]:
    """The tasks of an audit (deterministic in the config)."""
    difficulty = {**cfg.difficulty, **planting(cfg.suite).difficulty}
    return generate_suite(cfg.suite, cfg.split, cfg.n, cfg.seed, **difficulty)


def _ask(health: TeacherHealth, fn: Callable[[], T]) -> tuple[T | None, str | None]:
    """A teacher call: (its answer, None), or (None, why it failed) when the reply stayed
    unusable or the endpoint failed. `TeacherDown` and our bugs propagate."""
    try:
        return health.call(fn), None
    except TeacherFailure as e:
        return None, f"teacher_failed: {' '.join(str(e).split())}"
    except ModelError as e:
        return None, f"{UNAVAILABLE}: {' '.join(str(e).split())}"


def _judge(record: AuditRecord, teacher: Teacher, task: Task, case: Case, health: TeacherHealth) -> Verdict | None:
    verdict, record.judge_failure = _ask(health, lambda: teacher.judge(task, case.steps))
    if verdict is not None:
        record.said_correct, record.analysis = verdict.correct, verdict.analysis
        record.said_step = None if verdict.correct else verdict.first_error
    return verdict


def _repair(record: AuditRecord, teacher: Teacher, task: Task, case: Case, verdict: Verdict | None,
            tools: ToolConfig, health: TeacherHealth) -> None:
    """Repair at the planted step; run it with the reference remainder; check for leaks."""
    k = case.first_error
    assert k is not None
    prefix = case.steps[:k]
    blamed = verdict is not None and not verdict.correct and verdict.first_error == k
    given = verdict if blamed else Verdict(correct=False, first_error=k, analysis=f"Step {k} is the first critical error.")
    record.repair_from = "teacher" if blamed else "planted"
    fix, record.repair_failure = _ask(health, lambda: teacher.repair(task, prefix, case.steps[k], given))
    if fix is None:
        return
    known = task.question + "\n" + render_steps(prefix, max_observation_chars=1 << 62)
    record.repair_leaks = leaks_answer(render_step(fix), task.answer, known)
    problem = step_problem(fix, k)
    if problem is not None:
        record.repair, record.repair_failure, record.repair_solved = fix, f"malformed: {problem}", False
        return
    join = Step(kind="action", thought="(the audit's own cell)", code=case.join_code)
    done = execute_steps(task, [fix, join] + case.remainder, tools, prefix=prefix)
    record.repair = done[0]
    record.repair_answer = done[-1].final_answer
    # A step whose code failed fixed nothing, though the remainder may reach gold without it.
    ran = done[0].error is None and not done[0].timed_out
    record.repair_solved = ran and task.score(record.repair_answer).correct


def _equivalence(record: AuditRecord, teacher: Teacher, task: Task, case: Case, health: TeacherHealth) -> None:
    prefix = case.steps[:case.first_error]
    for pair in case.pairs:
        said, failure = _ask(health, lambda: teacher.equivalent(task, prefix, pair.a, pair.b))
        record.equivalence.append(EquivalenceCheck(pair.name, pair.equivalent, said, failure))


def audit_case(task: Task, case: Case, teacher: Teacher, tools: ToolConfig, health: TeacherHealth) -> AuditRecord:
    """Judge one trajectory and, when an error was planted, repair it and ask about its pairs."""
    planted = case.first_error is not None
    record = AuditRecord(case_id=f"{task.id}/{'planted' if planted else 'correct'}", task_id=task.id,
                         suite=task.suite, kind=case.kind, planted_step=case.first_error, steps=case.steps)
    calls, tokens = teacher.usage.calls, teacher.usage.tokens
    verdict = _judge(record, teacher, task, case, health)
    if planted:
        _repair(record, teacher, task, case, verdict, tools, health)
        _equivalence(record, teacher, task, case, health)
    record.teacher_calls = teacher.usage.calls - calls
    record.teacher_tokens = teacher.usage.tokens - tokens
    return record


def audit(make_teacher: Callable[[], Teacher], cfg: AuditConfig, out: str | Path,
          resume_free: tuple[str, ...] = RESUME_FREE) -> list[AuditRecord]:
    """Audit the teachers `make_teacher` makes (one per task) into `out`; returns every case's
    record, in task order. Resumes from OUT/cases.jsonl; a rerun with other settings is
    refused (`RunDirConflict`). The report is written by `audit_report.write_report`."""
    open_run_dir(out, cfg, resume_free)
    records = RecordLog(Path(out) / "cases.jsonl", AuditRecord, key=lambda r: r.case_id,
                        replaceable=lambda r: r.unavailable)
    done = records.load()
    tasks = audit_tasks(cfg)
    ids = {f"{t.id}/{side}" for t in tasks for side in ("correct", "planted")}
    if set(done) - ids:
        raise ValueError(f"{records.path} holds cases this audit does not make; use a new output directory")
    todo = [(i, t) for i, t in enumerate(tasks)
            if any(f"{t.id}/{side}" not in done or done[f"{t.id}/{side}"].unavailable for side in ("correct", "planted"))]
    health = TeacherHealth(cfg.teacher_down_after)
    rules = planting(cfg.suite)

    def one(item: tuple[int, Task]) -> list[AuditRecord]:
        if health.down:  # the queued tasks stop at once: no planting for nothing
            raise TeacherDown(health.describe())
        i, task = item
        pair = audit_pair(task, i, cfg.seed, cfg.tools, rules)
        teacher = make_teacher()
        return [audit_case(task, pair.correct, teacher, cfg.tools, health),
                audit_case(task, pair.planted, teacher, cfg.tools, health)]

    log.info("audit %s: %d tasks, %d already done", cfg.suite, len(tasks), len(tasks) - len(todo))
    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        for n, pair_records in enumerate(pool.map(one, todo), start=1):
            for record in pair_records:
                records.append(record)
                done[record.case_id] = record
            log.info("audit %s: task %d/%d | %s", cfg.suite, n, len(todo), _line(pair_records[1]))
    return [done[f"{t.id}/{side}"] for t in tasks for side in ("correct", "planted")]


def _line(r: AuditRecord) -> str:
    """One readable line about a planted case."""
    said = "failed" if r.said_correct is None else ("correct" if r.said_correct else f"step {r.said_step}")
    repair = "failed" if r.repair_solved is None else ("gold" if r.repair_solved else "not gold")
    return f"{r.kind} at step {r.planted_step}: judge said {said}; repair {repair}; tokens {r.teacher_tokens}"
