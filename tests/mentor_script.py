"""A scripted student and a scripted teacher for the MPS and BC tests (also run as a
subprocess driver by the crash test).

The student plays a few fixed behaviours, chosen by the question text:
- "right": a plan, `base = 6`, `x = base * 7`, `final_answer(x)`;
- "wrong-once": like "right" but writes `x = base * 8; secret = 1` at step 2 (a mistake that
  also leaves a variable the teacher's fix must not see), then `final_answer(x)`;
- "wrong-twice": `base = 5` at step 1 (wrong), then `x = base * 8` at step 2 (wrong again),
  then `final_answer(x)`;
- "stubborn": answers `final_answer(0)` at every action turn (and the teacher's fix for it
  does not help, so it stays wrong);
- "judge-fails" / "out-of-range" / "no-error" / "bad-fix": like "wrong-once" (the teacher
  misbehaves on these);
- "teacher-answers": like "wrong-once"; the teacher's fix calls final_answer itself.

The teacher judges by finding the first step whose code differs from the reference solution
(`REFERENCE`), and repairs with the reference step at that index.

    python tests/mentor_script.py OUT_DIR N_TASKS SLEEP_S    # the crash test's driver
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from score_distill.models.scripted import ScriptedModel
from score_distill.teachers.base import TeacherUsage, Verdict
from score_distill.teachers.llm import TeacherFailure
from score_distill.types import Step, Task

PLAN = "<first_thought>multiply six by seven</first_thought>"
REFERENCE = ["", "base = 6", "x = base * 7\nprint(x, 'secret' in dir())", "final_answer(x)"]


def act(code: str, thought: str = "next") -> str:
    return f"<thought>{thought}</thought>\n<code>\n{code}\n</code>"


def assistant_turns(messages: list[dict[str, str]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


def student_policy(messages: list[dict[str, str]]) -> str:
    question, done = messages[1]["content"], assistant_turns(messages)
    kind, k = question.split(":")[0], len(done)
    if k == 0:
        return PLAN
    if kind == "stubborn":
        return act("final_answer(0)")
    if kind == "wrong-twice":
        script = {1: "base = 5", 2: "x = base * 8"}
    elif kind == "right":
        script = {1: "base = 6", 2: "x = base * 7"}
    else:
        script = {1: "base = 6", 2: "x = base * 8\nsecret = 1"}
    return act(script.get(k, "final_answer(x)"))


def make_student() -> ScriptedModel:
    return ScriptedModel(student_policy)


def make_task(kind: str, i: int = 0) -> Task:
    return Task(id=f"{kind}-{i}", question=f"{kind}: what is six times seven? (#{i})", answer="42", suite="math")


class ScriptedTeacher:
    """Judge: the first step whose code differs from REFERENCE (a step past its end counts
    as wrong too); repair: the REFERENCE step there. Misbehaves on purpose for some kinds.
    Every call is appended to `log` (one JSON line per call) when given."""

    def __init__(self, sleep_s: float = 0.0, log: str | None = None):
        self.usage = TeacherUsage()
        self.sleep_s, self.log = sleep_s, log
        self.lock = threading.Lock()

    def _note(self, op: str, task: Task) -> None:
        time.sleep(self.sleep_s)
        with self.lock:
            self.usage.add(op, 10)
            if self.log:
                with open(self.log, "a") as f:
                    f.write(json.dumps({"op": op, "task": task.id, "pid": os.getpid()}) + "\n")

    def judge(self, task: Task, steps: list[Step]) -> Verdict:
        self._note("judge", task)
        kind = task.id.rsplit("-", 1)[0]
        if kind == "judge-fails":
            raise TeacherFailure("judge", task.id, ["not JSON"] * 3, ["?"] * 3)
        if kind == "out-of-range":
            return Verdict(correct=False, first_error=len(steps) + 3, analysis="?", tokens=7)
        if kind == "no-error":
            return Verdict(correct=True, tokens=7)
        for i, s in enumerate(steps):
            if i >= len(REFERENCE) or (i > 0 and s.code != REFERENCE[i]):
                return Verdict(False, i, analysis=f"step {i} is off", suggestion="follow the plan", tokens=7)
        return Verdict(False, len(steps) - 1, analysis="wrong answer", tokens=7)

    def repair(self, task: Task, prefix: list[Step], mistaken: Step, verdict: Verdict) -> Step:
        self._note("repair", task)
        kind, k = task.id.rsplit("-", 1)[0], len(prefix)
        if kind == "bad-fix":
            return Step(kind="plan", thought="start over", n_tokens=3)
        if kind == "stubborn":  # a fix that does not help: the student answers 0 anyway
            return Step(kind="action", thought="look again", code="print('try again')", n_tokens=3)
        if kind == "teacher-answers":
            return Step(kind="action", thought="finish", code="final_answer(base * 7)", author="teacher", n_tokens=3)
        if k == 0:
            return Step(kind="plan", thought="multiply six by seven", author="teacher", n_tokens=3)
        code = REFERENCE[k] if k < len(REFERENCE) else "final_answer(x)"
        return Step(kind="action", thought="compute it", code=code, author="teacher", n_tokens=3)

    def solve(self, task: Task) -> list[Step]:
        self._note("solve", task)
        kind = task.id.rsplit("-", 1)[0]
        if kind == "judge-fails":
            raise TeacherFailure("solve", task.id, ["no final answer"], ["..."])
        last = "final_answer(x + 1)" if kind == "stubborn" else REFERENCE[3]
        codes = [REFERENCE[1], REFERENCE[2], last]
        return [Step(kind="plan", thought="multiply", author="teacher")] + [
            Step(kind="action", thought="step", code=c, author="teacher", n_tokens=2) for c in codes]

    def equivalent(self, task: Task, prefix: list[Step], a: Step, b: Step) -> bool:
        return a.code == b.code


KINDS = ["right", "wrong-once", "wrong-twice", "stubborn", "judge-fails", "out-of-range", "teacher-answers"]


def crash_tasks(n: int) -> list[Task]:
    return [make_task(KINDS[i % len(KINDS)], i) for i in range(n)]


def main(out: str, n: int, sleep_s: float) -> None:
    from score_distill.stages.mps import MentorConfig, mentor
    from score_distill.stages.split import SplitConfig, read_mps_records, write_split
    from score_distill.tools.config import ToolConfig
    from score_distill.tools.sandbox import SandboxConfig

    cfg = MentorConfig(max_in_flight=4, teacher_concurrency=4, tools=ToolConfig(sandbox=SandboxConfig(timeout_s=5.0)))
    teacher = ScriptedTeacher(sleep_s=sleep_s, log=str(Path(out) / "teacher_calls.log"))
    mentor(make_student(), teacher, crash_tasks(n), out, cfg)
    write_split(read_mps_records(out), Path(out) / "export", SplitConfig())  # stage 2, as the pipeline runs it


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
