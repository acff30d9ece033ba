"""Cold-start BC data: the seeded fraction of tasks, real observations, rejection sampling,
teacher failures marked, resuming."""

from __future__ import annotations

import json

import pytest

from score_distill.agent.steps import execute_steps
from score_distill.stages.bc import BCConfig, choose_tasks, collect_bc
from score_distill.types import BCRecord
from score_distill.exports import read_sft_examples
from score_distill.tools.config import ToolConfig
from score_distill.tools.sandbox import SandboxConfig
from score_distill.types import Step, Trajectory, read_jsonl
from tests.mentor_script import ScriptedTeacher, make_task

TOOLS = ToolConfig(sandbox=SandboxConfig(timeout_s=5.0))


def test_choose_tasks_fraction_and_seed():
    ids = [f"task-{i}" for i in range(50)]
    a = choose_tasks(ids, 0.2, seed=0)
    assert len(a) == 10 and len(set(a)) == 10 and set(a) <= set(ids)
    assert a == choose_tasks(ids, 0.2, seed=0) == choose_tasks(list(reversed(ids)), 0.2, seed=0)[::-1]
    assert set(a) != set(choose_tasks(ids, 0.2, seed=1))
    assert choose_tasks(ids, 0.0, 0) == [] and choose_tasks(ids, 1.0, 0) == ids
    with pytest.raises(ValueError):
        choose_tasks(ids, 1.5, 0)


class MixedTeacher(ScriptedTeacher):
    """ScriptedTeacher's solutions plus broken ones for the rejection reasons."""

    def solve(self, task):
        kind = task.id.rsplit("-", 1)[0]
        good = super().solve(make_task("right"))
        if kind == "too-long":
            return good[:1] + [Step(kind="action", thought="t", code="print(1)")] * 8 + good[1:]
        if kind == "malformed":
            return good[1:]  # no plan first
        if kind == "no-answer":
            return good[:-1]
        if kind == "lying":  # claims an observation the tools do not produce
            good[1].observation = "base is 7"
            return good
        if kind == "after-answer":  # steps after final_answer are dropped
            return good + [Step(kind="action", thought="more", code="print('never')")]
        return super().solve(task)


@pytest.fixture(scope="module")
def bc_run(tmp_path_factory):
    kinds = ["right", "stubborn", "judge-fails", "too-long", "malformed", "no-answer", "lying", "after-answer"]
    out = tmp_path_factory.mktemp("bc")
    tasks = [make_task(k) for k in kinds]
    summary = collect_bc(MixedTeacher(), tasks, out, BCConfig(fraction=1.0, tools=TOOLS))
    records = {r.task_id.rsplit("-", 1)[0]: r for r in read_jsonl(out / "records.jsonl", BCRecord)}
    return out, summary, records, tasks


def test_rejection_sampling_keeps_only_correct_solutions(bc_run):
    out, summary, records, _ = bc_run
    status = {k: (r.status, (r.reason or "").split(":")[0]) for k, r in records.items()}
    assert status == {"right": ("kept", ""), "after-answer": ("kept", ""), "stubborn": ("rejected", "wrong_answer"),
                      "judge-fails": ("teacher_failed", "teacher_failed"), "too-long": ("rejected", "too_long"),
                      "malformed": ("rejected", "malformed"), "no-answer": ("rejected", "no_answer"),
                      "lying": ("rejected", "observation_mismatch")}
    assert summary["kept"] == 2 and summary["rejected"] == 5 and summary["teacher_failed"] == 1
    assert summary["rejected_reasons"] == {"malformed": 1, "no_answer": 1, "observation_mismatch": 1,
                                           "too_long": 1, "wrong_answer": 1}
    assert summary["teacher_calls"] == 8 and json.loads((out / "summary.json").read_text()) == summary


def test_kept_trajectories_carry_real_observations(bc_run):
    out, _, records, _ = bc_run
    trajs = read_jsonl(out / "bc_trajectories.jsonl", Trajectory)
    assert [t.task_id for t in trajs] == ["right-0", "after-answer-0"]
    for t in trajs:
        assert all(s.author == "teacher" for s in t.steps) and t.final_answer == "42"
        assert [s.observation for s in t.steps] == ["", "(no output)", "42 False", "(no output)"]
        assert t.steps[-1].final_answer == "42" and t.meta["correct"]
    pairs = read_sft_examples(out / "bc_trajectories.jsonl")
    assert pairs[0][0] == make_task("right").question
    assert (out / "export" / "bc_trl.jsonl").read_text().count("\n") == 2


def test_rerun_resumes_without_teacher_calls(bc_run):
    out, summary, _, tasks = bc_run
    teacher = MixedTeacher()
    again = collect_bc(teacher, tasks, out, BCConfig(fraction=1.0, tools=TOOLS))
    assert teacher.usage.calls == 0 and again["resumed_tasks"] == 8
    assert again["kept"] == summary["kept"]


def test_fraction_of_tasks_and_chosen_ids(tmp_path):
    tasks = [make_task("right", i) for i in range(10)]
    teacher = ScriptedTeacher()
    summary = collect_bc(teacher, tasks, tmp_path, BCConfig(fraction=0.3, seed=7, tools=TOOLS))
    chosen = json.loads((tmp_path / "chosen_ids.json").read_text())
    assert chosen == choose_tasks([t.id for t in tasks], 0.3, 7) and len(chosen) == 3
    assert teacher.usage.calls == 3 and summary["chosen"] == 3 and summary["tasks"] == 10
    assert [t.task_id for t in read_jsonl(tmp_path / "bc_trajectories.jsonl", Trajectory)] == chosen


def test_execute_steps_stops_at_final_answer():
    plan = Step(kind="plan", thought="p")
    acts = [Step(kind="action", thought="a", code="print(6 * 7)"), Step(kind="action", thought="b", code="final_answer(1)"),
            Step(kind="action", thought="c", code="print('late')")]
    ran = execute_steps(make_task("right"), [plan, *acts], TOOLS)
    assert [s.observation for s in ran] == ["", "42", "(no output)"] and ran[-1].final_answer == "1"


def test_bc_command_with_the_reference_teacher(tmp_path, capsys):
    import argparse

    from score_distill.commands import bc as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--teacher", "reference", "--tasks", "math:train", "--n", "10", "--fraction", "0.5",
                              "--seed", "3", "--tools.sandbox.timeout-s", "5", "--out", str(tmp_path)])
    assert command.run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["chosen"] == 5 and summary["kept"] == 5  # reference solutions are correct
    trajs = read_jsonl(tmp_path / "bc_trajectories.jsonl", Trajectory)
    assert [t.task_id for t in trajs] == json.loads((tmp_path / "chosen_ids.json").read_text())
    assert all(s.observation for t in trajs for s in t.steps if s.kind == "action" and s.final_answer is None)
    assert "fraction: 0.5" in (tmp_path / "config.yaml").read_text()


class FlakyEndpointTeacher(ScriptedTeacher):
    """ScriptedTeacher whose endpoint fails (ModelError, as after the HTTP client's retries)
    for the tasks `broken` picks, for as long as `down` is set."""

    def __init__(self, broken):
        super().__init__()
        self.broken, self.down, self.solve_calls = broken, True, 0

    def solve(self, task):
        from score_distill.models.base import ModelError

        self.solve_calls += 1
        if self.down and self.broken(task):
            raise ModelError("HTTP 502 from the teacher: <html>bad gateway</html>")
        return super().solve(task)


def test_a_task_whose_teacher_endpoint_fails_is_marked_and_retried_by_a_rerun(tmp_path):
    tasks = [make_task("right", i) for i in range(4)]
    teacher = FlakyEndpointTeacher(lambda t: t.id == tasks[1].id)
    cfg = BCConfig(fraction=1.0, tools=TOOLS, teacher_concurrency=1)
    summary = collect_bc(teacher, tasks, tmp_path, cfg)
    records = {r.task_id: r for r in read_jsonl(tmp_path / "records.jsonl", BCRecord)}
    assert records[tasks[1].id].status == "teacher_failed"
    assert records[tasks[1].id].reason.startswith("teacher_unavailable: solve: HTTP 502")
    assert summary["kept"] == 3 and summary["teacher_unavailable"] == 1
    teacher.down, teacher.solve_calls = False, 0
    again = collect_bc(teacher, tasks, tmp_path, cfg)
    assert teacher.solve_calls == 1 and again["kept"] == 4 and again["teacher_unavailable"] == 0
    assert again["resumed_tasks"] == 3


def test_a_teacher_endpoint_that_stays_down_stops_bc_and_a_rerun_completes(tmp_path):
    from score_distill.teachers.health import TeacherDown

    tasks = [make_task("right", i) for i in range(5)]
    teacher = FlakyEndpointTeacher(lambda t: True)
    cfg = BCConfig(fraction=1.0, tools=TOOLS, teacher_concurrency=1, teacher_down_after=2)
    with pytest.raises(TeacherDown, match="2 calls in a row"):
        collect_bc(teacher, tasks, tmp_path, cfg)
    assert teacher.solve_calls == 2  # the tasks after them made no call
    teacher.down = False
    summary = collect_bc(teacher, tasks, tmp_path, cfg)
    assert summary["kept"] == 5 and summary["teacher_unavailable"] == 0
