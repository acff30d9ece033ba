"""Mentored Problem-Solving with a scripted student and a scripted teacher: every branch
(solved with 0, 1, 2+ interventions, hard to teach, teacher failures marked), the fix run in
the verified prefix's state, key-step items, the summary, resuming, and a SIGKILL mid-run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from score_distill.commands.mentor import excluded_ids
from score_distill.agent.steps import execute_steps
from score_distill.stages.mps import MentorConfig, mentor
from score_distill.rundir import RecordLog, open_run_dir
from score_distill.types import MentorRecord
from score_distill.tools.config import ToolConfig
from score_distill.tools.sandbox import SandboxConfig
from score_distill.types import KeyStepItem, Step, Task, Trajectory, read_jsonl
from tests.mentor_script import REFERENCE, ScriptedTeacher, crash_tasks, make_student, make_task

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ToolConfig(sandbox=SandboxConfig(timeout_s=5.0))
SUMMARY_KEYS = {"tasks", "solved_by_interventions", "hard_to_teach", "first_error_step_hist", "teacher_calls",
                "teacher_tokens", "student_tokens", "wall_time_s"}


def config(**kw) -> MentorConfig:
    return MentorConfig(tools=TOOLS, **kw)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One MPS run over every behaviour of the scripted pair."""
    kinds = ["right", "wrong-once", "wrong-twice", "stubborn", "judge-fails", "out-of-range", "no-error",
             "bad-fix", "teacher-answers"]
    out = tmp_path_factory.mktemp("mps")
    student, teacher = make_student(), ScriptedTeacher()
    summary = mentor(student, teacher, [make_task(k) for k in kinds], out, config())
    records = {r.task_id.rsplit("-", 1)[0]: r for r in read_jsonl(out / "records.jsonl", MentorRecord)}
    return out, summary, records, student


def codes(traj: Trajectory) -> list[str]:
    return [s.code for s in traj.steps]


def test_solved_without_help(run):
    _, _, records, _ = run
    r = records["right"]
    assert r.status == "solved" and r.interventions == [] and r.keysteps == [] and r.teacher_calls == 0
    assert r.trajectory.final_answer == "42" and r.trajectory.meta["status"] == "solved"
    assert all(s.author == "student" for s in r.trajectory.steps)


def test_fix_runs_in_prefix_state_not_in_discarded_state(run):
    _, _, records, _ = run
    r = records["wrong-once"]
    assert r.status == "solved" and len(r.interventions) == 1
    iv = r.interventions[0]
    assert iv.step_index == 2 and iv.mistaken.code == "x = base * 8\nsecret = 1" and iv.mistaken.author == "student"
    # `base` comes from the replayed prefix; `secret` was set by the discarded step only.
    assert iv.fixed.observation == "42 False" and iv.fixed.author == "teacher"
    steps = r.trajectory.steps
    assert [s.author for s in steps] == ["student", "student", "teacher", "student"]
    assert steps[3].code == "final_answer(x)" and r.trajectory.final_answer == "42"  # the student carried on
    assert r.teacher_calls == 2 and r.teacher_tokens == 7 + 3


def test_key_step_item_has_prefix_chosen_rejected(run):
    _, _, records, _ = run
    [item] = records["wrong-once"].keysteps
    assert isinstance(item, KeyStepItem) and item.answer == "42" and item.suite == "math"
    assert [s.kind for s in item.prefix] == ["plan", "action"] and item.prefix[1].code == "base = 6"
    assert item.step_index == 2 == item.meta["step_index"]
    assert item.chosen.code == REFERENCE[2] and item.chosen.observation == "42 False"
    assert item.rejected.code == "x = base * 8\nsecret = 1" and item.rejected.observation == "(no output)"
    assert item.meta["intervention"] == 1 and item.meta["analysis"] == "step 2 is off"
    assert item.meta["suggestion"] == "follow the plan"


def test_two_interventions_both_kept(run):
    _, _, records, _ = run
    r = records["wrong-twice"]
    assert r.status == "solved" and [iv.step_index for iv in r.interventions] == [1, 2]
    assert codes(r.trajectory)[1:3] == [REFERENCE[1], REFERENCE[2]]
    assert [k.meta["intervention"] for k in r.keysteps] == [1, 2]
    # The second item's verified prefix holds the first fix.
    assert r.keysteps[1].prefix[1].author == "teacher" and r.keysteps[1].prefix[1].code == REFERENCE[1]


def test_hard_to_teach_after_max_interventions(run):
    _, _, records, _ = run
    r = records["stubborn"]
    assert r.status == "hard_to_teach" and len(r.interventions) == 3 and r.keysteps == []
    assert r.teacher_calls == 6 and r.trajectory.final_answer == "0"
    assert r.trajectory.meta["status"] == "hard_to_teach"


@pytest.mark.parametrize("kind, reason", [("judge-fails", "judge_failed"), ("out-of-range", "judge_out_of_range"),
                                          ("no-error", "judge_no_error"), ("bad-fix", "repair_malformed")])
def test_teacher_failures_are_marked_not_dropped(run, kind, reason):
    _, _, records, _ = run
    r = records[kind]
    assert r.status == "teacher_failed" and r.reason.startswith(reason + ":")
    assert r.trajectory.meta["reason"] == r.reason and r.trajectory.steps  # the student's trajectory is kept
    assert r.interventions == [] and r.keysteps == []


def test_teacher_final_answer_ends_the_episode(run):
    _, _, records, _ = run
    r = records["teacher-answers"]
    assert r.status == "solved" and len(r.interventions) == 1
    last = r.trajectory.steps[-1]
    assert last.author == "teacher" and last.final_answer == "42" and len(r.trajectory.steps) == 3


def test_derived_files_and_summary(run):
    out, summary, records, student = run
    assert SUMMARY_KEYS <= set(summary) and json.loads((out / "summary.json").read_text()) == summary
    assert summary["tasks"] == 9
    assert summary["solved_by_interventions"] == {"0": 1, "1": 2, "2+": 1}
    assert summary["hard_to_teach"] == 1 and summary["teacher_failed"] == 4
    # wrong-once: 2; wrong-twice: 1, 2; stubborn: 1, 1, 1 (its fix at step 1 never helps);
    # teacher-answers: 2.
    assert summary["first_error_step_hist"] == {"1": 4, "2": 3}
    assert summary["teacher_calls"] == sum(r.teacher_calls for r in records.values()) == 2 + 4 + 6 + 1 + 1 + 1 + 2 + 2
    assert summary["student_tokens"] == sum(r.student_tokens for r in records.values()) > 0
    trajs = read_jsonl(out / "mps_trajectories.jsonl", Trajectory)
    assert [t.task_id for t in trajs] == [f"{k}-0" for k in ["right", "wrong-once", "wrong-twice", "stubborn",
                                                             "judge-fails", "out-of-range", "no-error", "bad-fix",
                                                             "teacher-answers"]]
    assert len(read_jsonl(out / "keysteps.jsonl", KeyStepItem)) == summary["keysteps"] == 4
    # The split is the next stage: the library call writes none of it (the command does).
    assert (out / "config.yaml").exists() and not (out / "export").exists()
    assert max(student.batch_sizes) > 1  # tasks in flight share the student's batched calls


def test_rerun_is_a_no_op(run):
    out, summary, _, _ = run
    teacher = ScriptedTeacher()
    again = mentor(make_student(), teacher, [make_task(k) for k in ["right", "wrong-once", "wrong-twice", "stubborn",
                   "judge-fails", "out-of-range", "no-error", "bad-fix", "teacher-answers"]], out, config())
    assert teacher.usage.calls == 0 and again["resumed_tasks"] == 9
    per_run = ("wall_time_s", "resumed_tasks", "teacher_usage_this_run")
    assert again["teacher_usage_this_run"]["calls"] == 0 < summary["teacher_usage_this_run"]["calls"]
    assert {k: v for k, v in again.items() if k not in per_run} == {k: v for k, v in summary.items() if k not in per_run}


def test_a_fix_runs_on_the_prefix_state_without_its_failed_cells_and_gets_its_observation():
    prefix = [Step(kind="plan", thought="p"), Step(kind="action", thought="a", code="y = 2"),
              Step(kind="action", thought="b", code="y = 100\n1/0", error="ZeroDivisionError: division by zero")]
    [fixed] = execute_steps(make_task("right"), [Step(kind="action", thought="t", code="print(y * 21)")], TOOLS,
                            prefix=prefix)
    assert fixed.observation == "42" and fixed.author == "teacher" and fixed.error is None
    [plan] = execute_steps(make_task("right"), [Step(kind="plan", thought="new plan")], TOOLS, prefix=prefix)
    assert plan.kind == "plan" and plan.observation == ""


def test_record_log_cuts_a_torn_line(tmp_path):
    log = RecordLog(tmp_path / "r.jsonl", Trajectory, key=lambda t: t.task_id)
    log.append(Trajectory(task_id="a"))
    log.append(Trajectory(task_id="b"))
    with open(log.path, "a") as f:
        f.write('{"schema": 1, "task_id": "c", "ste')
    assert sorted(log.load()) == ["a", "b"]
    assert log.path.read_text().endswith("\n")
    log.append(Trajectory(task_id="c"))
    assert sorted(log.load()) == ["a", "b", "c"]


def test_record_log_rejects_duplicates(tmp_path):
    log = RecordLog(tmp_path / "r.jsonl", Trajectory, key=lambda t: t.task_id)
    log.append(Trajectory(task_id="a"))
    log.append(Trajectory(task_id="a"))
    with pytest.raises(ValueError, match="recorded twice"):
        log.load()


def test_resume_with_other_settings_is_refused(tmp_path):
    open_run_dir(tmp_path, config())
    open_run_dir(tmp_path, config(teacher_concurrency=3), ("teacher_concurrency",))  # speed only: fine
    with pytest.raises(ValueError, match="max_interventions"):
        open_run_dir(tmp_path, config(max_interventions=5))


def test_excluded_ids(tmp_path):
    (tmp_path / "chosen_ids.json").write_text('["a", "b"]')
    assert excluded_ids(str(tmp_path)) == {"a", "b"}
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(ValueError):
        excluded_ids(str(tmp_path / "bad.json"))


def _records(out: Path) -> dict[str, dict]:
    """Records by task id, without the fields that measure time."""
    out_map = {}
    for line in (out / "records.jsonl").read_text().splitlines():
        d = json.loads(line)
        for k in ("model_time_s", "tool_time_s"):
            d["trajectory"].pop(k)
        out_map[d["task_id"]] = d
    return out_map


def _driver(out: Path, n: int, sleep_s: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.mentor_script", str(out), str(n), str(sleep_s)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(tmp_path):
    n = 8
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    ref = _driver(whole, n, 0.0)
    victim = _driver(killed, n, 0.2)
    records = killed / "records.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and victim.poll() is None:
        if records.exists() and records.read_text().count("\n") >= 2:
            break
        time.sleep(0.01)
    assert victim.poll() is None, victim.stderr.read().decode()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done_before = set(_records(killed)) if records.exists() else set()
    assert 0 < len(done_before) < n
    calls_before = (killed / "teacher_calls.log").read_text().count("\n")
    assert ref.wait(timeout=120) == 0, ref.stderr.read().decode()

    rerun = _driver(killed, n, 0.0)
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read().decode()
    lines = records.read_text().splitlines()
    ids = [json.loads(line)["task_id"] for line in lines]
    assert sorted(ids) == sorted(t.id for t in crash_tasks(n))  # every task exactly once
    assert _records(killed) == _records(whole)
    for name in ("mps_trajectories.jsonl", "keysteps.jsonl"):
        a, b = [read_jsonl(d / name, KeyStepItem if name == "keysteps.jsonl" else Trajectory) for d in (whole, killed)]
        assert [x.task_id for x in a] == [x.task_id for x in b]
    # No teacher call was made again for a task recorded before the kill.
    calls = [json.loads(line) for line in (killed / "teacher_calls.log").read_text().splitlines()]
    after = {c["task"] for c in calls[calls_before:]}
    assert not after & done_before
    summary = json.loads((killed / "summary.json").read_text())
    ref_summary = json.loads((whole / "summary.json").read_text())
    for key in ("tasks", "solved_by_interventions", "hard_to_teach", "first_error_step_hist", "teacher_calls",
                "teacher_tokens", "student_tokens"):
        assert summary[key] == ref_summary[key], key
    assert summary["resumed_tasks"] == len(done_before)
    # The split read back from the resumed run's log (a task once) is the uninterrupted run's.
    split = [json.loads((d / "export" / "split.json").read_text()) for d in (whole, killed)]
    assert split[0] == split[1] and split[0]["counts"]["sft_tasks"] + split[0]["counts"]["rl_tasks"] > 0


def test_mentor_command_with_the_reference_teacher(tmp_path, capsys, monkeypatch):
    """The command's wiring (flags, task loading, --exclude, the teacher spec) with a scripted
    student standing in for a model: it plans, then answers 0 at once."""
    import argparse

    from score_distill.commands import mentor as command
    from score_distill.models.scripted import ScriptedModel

    def student(messages):
        return "<first_thought>guess</first_thought>" if len(messages) == 2 else \
            "<thought>guess</thought>\n<code>\nfinal_answer(0)\n</code>"

    monkeypatch.setattr("score_distill.models.load.load_model", lambda spec, **kw: ScriptedModel(student))
    (tmp_path / "skip.json").write_text(json.dumps(["math-5-train-0"]))
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--student", "scripted", "--teacher", "reference", "--tasks", "math:train", "--n", "3",
                              "--seed", "5", "--exclude", str(tmp_path / "skip.json"), "--max-interventions", "4",
                              "--tools.sandbox.timeout-s", "5", "--out", str(tmp_path / "out")])
    assert command.run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tasks"] == 2 and summary["teacher_calls"] > 0
    records = read_jsonl(tmp_path / "out" / "records.jsonl", MentorRecord)
    assert "math-5-train-0" not in {r.task_id for r in records}
    # The reference teacher's fixes lead the student to the gold answer.
    assert summary["solved_by_interventions"]["1"] + summary["solved_by_interventions"]["2+"] >= 1
    config_text = (tmp_path / "out" / "config.yaml").read_text()
    assert "seed: 5" in config_text and config_text.count("seed: 5") == 3  # --seed reaches rollout and split
    # Stage 2 on the records: the command writes the split, and the summary says what it holds.
    split = json.loads((tmp_path / "out" / "export" / "split.json").read_text())
    assert split["seed"] == 5 and split["counts"] == summary["export"]
    assert split["counts"]["sft_tasks"] + split["counts"]["rl_tasks"] == summary["solved"]
    # The RL items' own tasks, with what the suite keeps in meta (the reference judge needs it).
    items = read_jsonl(tmp_path / "out" / "export" / "rl_items.jsonl", KeyStepItem)
    rl_tasks = read_jsonl(tmp_path / "out" / "export" / "rl_tasks.jsonl", Task)
    assert {t.id for t in rl_tasks} == {i.task_id for i in items} and all("nodes" in t.meta for t in rl_tasks)
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary


def test_llm_teacher_over_a_fake_server_and_its_cache_after_lost_records(tmp_path):
    """MPS with the LLM teacher over an OpenAI-compatible endpoint. A crash that lost the
    records of tasks in flight costs no teacher call on the rerun: every call is answered
    from the teacher's content cache, and the records come out the same."""
    from score_distill.teachers.load import load_teacher
    from tests.fake_teacher_server import FakeServer, system

    def reply(request: dict) -> str:
        if system(request).startswith("You grade"):
            return json.dumps({"is_correct": False, "error_analysis": "step 1 answers 0 without computing",
                               "first_error_step": 1, "suggestion": "multiply the two numbers"})
        return "<thought>Multiply the two numbers.</thought>\n<code>\nfinal_answer(6 * 7)\n</code>"

    tasks = [make_task("stubborn", i) for i in range(3)]
    out = tmp_path / "out"
    with FakeServer(reply) as server:
        spec = f"openai:fake@{server.url}"
        summary = mentor(make_student(), load_teacher(spec, tools=TOOLS, cache_dir=tmp_path / "cache"), tasks, out,
                         config())
        assert server.hits == 6 and summary["solved_by_interventions"] == {"0": 0, "1": 3, "2+": 0}
        first = _records(out)
        (out / "records.jsonl").unlink()
        again = mentor(make_student(), load_teacher(spec, tools=TOOLS, cache_dir=tmp_path / "cache"), tasks, out,
                       config())
        assert server.hits == 6 and again["teacher_usage_this_run"]["calls"] == 0
    assert _records(out) == first and again["teacher_calls"] == summary["teacher_calls"] == 6
    fixed = first["stubborn-0"]["trajectory"]["steps"][1]
    assert fixed["author"] == "teacher" and fixed["final_answer"] == "42"
