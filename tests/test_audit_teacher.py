"""The teacher audit (`score-distill audit-teacher`): the reference teacher scores 100% on
every number; teachers that are bad in one way each get the low number that way; the LLM
teacher over HTTP against fake servers that answer well, answer garbage, or time out always
finishes, with every failed call counted and every token counted; the command end to end."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from score_distill.cli import main
from score_distill.models.base import ModelError
from score_distill.teachers.audit import AuditConfig, AuditRecord, audit, audit_tasks, per_task_teachers, planting
from score_distill.teachers.audit_report import audit_metrics, write_report
from score_distill.teachers.base import Teacher, Verdict
from score_distill.teachers.health import TeacherDown
from score_distill.teachers.llm import TeacherFailure
from score_distill.teachers.planted import audit_pair
from score_distill.teachers.reference import ReferenceTeacher
from score_distill.tools.config import ToolConfig
from score_distill.types import Step, Task, read_jsonl
from tests.fake_teacher_server import FakeReply, FakeServer
from tests.test_llm_teacher import brain

TOOLS = ToolConfig()
PERFECT = {"first_error_exact": 1.0, "first_error_within_one": 1.0, "errors_missed": 0.0, "false_alarms": 0.0,
           "repair_to_gold": 1.0, "answer_leaks": 0.0, "equivalence_agreement": 1.0, "failed_calls": 0.0}


def rates(records: list[AuditRecord]) -> dict[str, float | None]:
    return {name: m["rate"] for name, m in audit_metrics(records)["metrics"].items()}


def run_audit(tmp_path: Path, make: Callable[[], Teacher], suite: str = "math", n: int = 4,
              **cfg: Any) -> list[AuditRecord]:
    return audit(make, AuditConfig(suite=suite, n=n, concurrency=2, **cfg), tmp_path / "audit")


# -- the planted cases ---------------------------------------------------------------------


@pytest.mark.parametrize("suite", ["math", "search"])
def test_cases_are_deterministic_and_cover_every_kind(suite: str):
    rules = planting(suite)
    tasks = audit_tasks(AuditConfig(suite=suite, n=4, seed=1))  # 4 tasks: every kind takes a turn
    pairs = [audit_pair(t, i, 1, TOOLS, rules) for i, t in enumerate(tasks)]
    assert {p.planted.kind for p in pairs} == set(rules.planted_kinds)
    assert {p.correct.kind for p in pairs} == set(rules.correct_kinds)
    for p in pairs:
        k = p.planted.first_error
        assert p.correct.first_error is None and p.task.score(p.correct.steps[-1].final_answer).correct
        assert k is not None and 1 <= k < len(p.planted.steps)
        assert not p.task.score(p.planted.steps[-1].final_answer).correct
        assert all(s.author == "student" and (s.kind == "plan" or s.observation) for s in p.planted.steps)
        assert [(q.name, q.equivalent) for q in p.planted.pairs] == [("reworded", True), ("mistaken", False)]
    again = audit_pair(tasks[2], 2, 1, TOOLS, rules)
    assert [s.code for s in again.planted.steps] == [s.code for s in pairs[2].planted.steps]


# -- the reference teacher: 100% -----------------------------------------------------------


@pytest.mark.parametrize("suite", ["math", "search"])
def test_the_reference_teacher_scores_100_percent(tmp_path: Path, suite: str):
    records = run_audit(tmp_path, ReferenceTeacher, suite, n=8)
    assert len(records) == 16 and rates(records) == PERFECT
    report = write_report(tmp_path / "audit", records, "reference", AuditConfig(suite=suite, n=8))
    rules = planting(suite)
    assert set(report["by_kind"]) == set(rules.planted_kinds) | set(rules.correct_kinds)
    assert report["teacher_usage"]["calls"] == 8 * 2 + 8 * (1 + 2) and report["teacher_usage"]["tokens"] > 0
    assert "| first error found, exact step | 100% [68, 100] | 8/8 | higher |" in (tmp_path / "audit/report.md").read_text()


# -- bad teachers: each number can fail ----------------------------------------------------


class BlamesStepOne(ReferenceTeacher):
    """Every trajectory is wrong at step 1; every repair writes the gold answer down; every
    two steps are equivalent."""

    def judge(self, task: Task, steps: list[Step]) -> Verdict:
        return Verdict(correct=False, first_error=1, analysis="step 1 looks off")

    def repair(self, task: Task, prefix: list[Step], mistaken: Step, verdict: Verdict) -> Step:
        return Step(kind="action", thought="I know it.", code=f"final_answer({json.dumps(task.answer)})", author="teacher")

    def equivalent(self, task: Task, prefix: list[Step], a: Step, b: Step) -> bool:
        return True


class SeesNoError(ReferenceTeacher):
    """Every trajectory is correct; repairs do nothing useful; no two steps are equivalent."""

    def judge(self, task: Task, steps: list[Step]) -> Verdict:
        return Verdict(correct=True, analysis="fine")

    def repair(self, task: Task, prefix: list[Step], mistaken: Step, verdict: Verdict) -> Step:
        return Step(kind="action", thought="Let me think.", code="print('thinking')", author="teacher")

    def equivalent(self, task: Task, prefix: list[Step], a: Step, b: Step) -> bool:
        return False


class OffByOne(ReferenceTeacher):
    """The reference's verdicts, blaming the step after the error (before it, at the end)."""

    def judge(self, task: Task, steps: list[Step]) -> Verdict:
        v = super().judge(task, steps)
        if not v.correct and v.first_error is not None:
            v.first_error = v.first_error + 1 if v.first_error + 1 < len(steps) else v.first_error - 1
        return v


class GivesUp(ReferenceTeacher):
    """Every call's reply stays unusable after the retries."""

    def judge(self, task: Task, steps: list[Step]) -> Verdict:
        raise TeacherFailure("judge", task.id, ["not JSON"] * 3, ["?"] * 3, tokens=30)

    def repair(self, task: Task, prefix: list[Step], mistaken: Step, verdict: Verdict) -> Step:
        raise TeacherFailure("repair", task.id, ["no <code> block"] * 3, ["?"] * 3, tokens=30)

    def equivalent(self, task: Task, prefix: list[Step], a: Step, b: Step) -> bool:
        raise TeacherFailure("equivalent", task.id, ["not JSON"] * 3, ["?"] * 3, tokens=30)


class RepairsThatFail(ReferenceTeacher):
    """The reference's verdicts; every repair's code raises."""

    def repair(self, task: Task, prefix: list[Step], mistaken: Step, verdict: Verdict) -> Step:
        return Step(kind="action", thought="Let me check.", code="print(undefined_name)\n```", author="teacher")


def test_a_repair_that_fails_reaches_no_gold_even_where_the_remainder_does(tmp_path: Path):
    records = run_audit(tmp_path, RepairsThatFail, suite="search")
    planted = [r for r in records if r.planted_step is not None]
    assert rates(records)["repair_to_gold"] == 0.0 and all(r.repair and r.repair.error for r in planted)
    # On search the remainder searches again: somewhere it reaches the gold answer without the repair.
    tasks = {t.id: t for t in audit_tasks(AuditConfig(suite="search", n=4))}
    assert any(tasks[r.task_id].score(r.repair_answer).correct for r in planted)


def test_a_teacher_that_blames_step_one_and_leaks(tmp_path: Path):
    got = rates(run_audit(tmp_path, BlamesStepOne, n=8))
    assert got["false_alarms"] == 1.0 and got["answer_leaks"] == 1.0
    assert got["first_error_exact"] < 1.0 and got["equivalence_agreement"] == 0.5
    assert got["repair_to_gold"] == 1.0  # writing the answer down reaches gold: the leak rate is what tells


def test_a_teacher_that_sees_no_error(tmp_path: Path):
    got = rates(run_audit(tmp_path, SeesNoError))
    assert got["errors_missed"] == 1.0 and got["first_error_exact"] == got["first_error_within_one"] == 0.0
    assert got["repair_to_gold"] == 0.0 and got["equivalence_agreement"] == 0.5 and got["false_alarms"] == 0.0


def test_off_by_one_is_never_exact_but_always_within_one(tmp_path: Path):
    got = rates(run_audit(tmp_path, OffByOne))
    assert got["first_error_exact"] == 0.0 and got["first_error_within_one"] == 1.0


def test_failed_calls_are_misses_and_counted(tmp_path: Path):
    records = run_audit(tmp_path, GivesUp)
    got = rates(records)
    assert got["failed_calls"] == 1.0 and got["first_error_exact"] == got["repair_to_gold"] == 0.0
    assert got["equivalence_agreement"] == 0.0 and got["false_alarms"] is None  # no correct trajectory was judged
    assert all(r.judge_failure and r.judge_failure.startswith("teacher_failed:") for r in records)
    # Per kind too, leaks and false alarms are over the calls that answered: none here.
    kinds = audit_metrics(records)["by_kind"].values()
    assert all(m.get("answer_leaks", m.get("false_alarms"))["n"] == 0 for m in kinds)


class Unreachable(ReferenceTeacher):
    def judge(self, task: Task, steps: list[Step]) -> Verdict:
        raise ModelError("HTTP 503: busy")


def test_an_unreachable_teacher_stops_the_audit_and_a_rerun_resumes(tmp_path: Path):
    with pytest.raises(TeacherDown, match="2 calls in a row"):
        run_audit(tmp_path, Unreachable, n=2, teacher_down_after=2)
    # Never stopping, every case is recorded as unavailable; a rerun redoes those cases.
    records = run_audit(tmp_path, Unreachable, n=2, teacher_down_after=0)
    assert all(r.unavailable for r in records)
    assert rates(run_audit(tmp_path, ReferenceTeacher, n=2, teacher_down_after=0)) == PERFECT
    lines = (tmp_path / "audit/cases.jsonl").read_text().splitlines()
    assert len(lines) == 8  # 4 unavailable, then the 4 redone


# -- the LLM teacher over HTTP -------------------------------------------------------------


def words(request: dict[str, Any]) -> int:
    return sum(len(str(m["content"]).split()) for m in request["messages"])


def replied(request: dict[str, Any]) -> str:
    """What the fake server sent: the brain's reply, cut before the first stop string hit."""
    text = brain(request["messages"])
    cuts = [text.find(s) for s in request.get("stop", []) if s in text]
    return text[:min(cuts)] if cuts else text


def llm_audit(tmp_path: Path, server: FakeServer, **client: Any) -> list[AuditRecord]:
    options = {"timeout_s": 5.0, "max_retries": 1, "backoff": 0.01, "max_backoff_s": 0.02, **client}
    make = per_task_teachers(f"openai:teacher-model@{server.url}", TOOLS, **options)
    records = run_audit(tmp_path, make, n=2, teacher_down_after=0)
    write_report(tmp_path / "audit", records, "openai:teacher-model", AuditConfig(n=2))
    return records


def test_a_working_llm_teacher_is_audited_with_its_tokens(tmp_path: Path):
    with FakeServer(lambda r: brain(r["messages"])) as server:
        records = llm_audit(tmp_path, server)
    assert rates(records)["failed_calls"] == 0.0 and server.hits == 2 + 2 * 4
    spent = sum(words(r) + len(replied(r).split()) for r in server.requests)
    assert sum(r.teacher_tokens for r in records) == spent
    report = json.loads((tmp_path / "audit/report.json").read_text())
    assert report["teacher_usage"] == {"calls": 10, "tokens": spent, "tokens_per_task": spent / 2}


def test_garbage_replies_are_retried_then_marked_and_paid_for(tmp_path: Path):
    with FakeServer(lambda r: "lol, no idea") as server:
        records = llm_audit(tmp_path, server)
    got = rates(records)
    assert got["failed_calls"] == 1.0 and got["first_error_exact"] == 0.0 and got["repair_to_gold"] == 0.0
    assert server.hits == 3 * 10  # each call: the first reply and two retries
    assert sum(r.teacher_tokens for r in records) == sum(words(r) + 3 for r in server.requests)
    assert all(r.judge_failure and "after 3 attempts" in r.judge_failure for r in records)


def test_timeouts_and_server_errors_are_marked_unavailable_never_a_crash(tmp_path: Path):
    state, lock = {"n": 0}, threading.Lock()

    def flaky(request: dict[str, Any]) -> str | FakeReply:
        """In turn: a good reply, then a timeout, a 500, an HTML body, garbage."""
        with lock:
            state["n"] += 1
            n = state["n"]
        bad = [FakeReply(delay_s=1.0), FakeReply(status=500), FakeReply(body="<html>"), "garbage"]
        return bad[n % 4] if n % 5 else brain(request["messages"])

    with FakeServer(flaky) as server:
        records = llm_audit(tmp_path, server, timeout_s=0.3)
    failures = audit_metrics(records)["failures"]
    made = sum(f["calls"] for f in failures.values())
    failed = sum(f["failed"] for f in failures.values())
    assert made == 10 and 0 < failed <= made
    report = (tmp_path / "audit/report.md").read_text()
    assert "| teacher calls with no usable answer |" in report and f"| {failed}/{made} |" in report


# -- the command ---------------------------------------------------------------------------


def test_the_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "audit"
    argv = ["audit-teacher", "--teacher", "reference", "--suite", "search", "--n", "3", "--out", str(out)]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["first_error_exact"][0] == 1.0 and printed["false_alarms"][2] == "0/3"
    assert {p.name for p in out.iterdir()} >= {"cases.jsonl", "report.json", "report.md", "config.yaml"}
    cases = read_jsonl(out / "cases.jsonl", AuditRecord)
    assert len(cases) == 6 and cases[1].planted_step is not None and cases[1].repair is not None
    before = (out / "cases.jsonl").read_bytes()
    assert main(argv) == 0 and (out / "cases.jsonl").read_bytes() == before  # resumed: nothing redone
    assert main(argv[:-4] + ["--n", "4", "--out", str(out)]) == 2  # other settings: refused
    assert main(["audit-teacher", "--teacher", "gpt@nowhere", "--out", str(tmp_path / "x")]) == 2


def test_the_command_against_an_llm_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with FakeServer(lambda r: brain(r["messages"])) as server:
        argv = ["audit-teacher", "--teacher", f"openai:fake@{server.url}", "--n", "2", "--out", str(tmp_path / "a")]
        assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["failed_calls"][2] == "0/10"
    with FakeServer(lambda r: "{not json") as server:  # garbage: every call retried, then marked
        argv = ["audit-teacher", "--teacher", f"openai:fake@{server.url}", "--n", "2", "--out", str(tmp_path / "b")]
        assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["failed_calls"][2] == "10/10" and server.hits == 30
