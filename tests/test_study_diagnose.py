"""bench/study/diagnose.py reads a study run directory and says how its trajectories ended and
how its RL runs moved; here on a run directory written by hand, so every figure is known."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "study" / "diagnose.py"


def traj(task: str, *, correct: bool = False, answer: str | None = None, stopped: str | None = None,
         error: str | None = None) -> dict:
    meta = {"correct": correct} | ({"stopped": stopped} if stopped else {})
    steps = [{"thought": "plan", "code": ""}, {"code": "x = 1", "error": error}]
    return {"task_id": task, "final_answer": answer, "generated_tokens": 10, "meta": meta, "steps": steps}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_it_counts_endings_rl_steps_and_mps_from_the_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "mps").mkdir(parents=True)
    (run / "run_state.json").write_text("{}")
    (run / "mps" / "summary.json").write_text(json.dumps({
        "tasks": 3, "teacher_tokens": 1234, "teacher_calls": 5, "student_tokens": 99, "hard_to_teach": 1,
        "solved_by_interventions": {"0": 1, "1": 1, "2+": 0}, "first_error_step_hist": {"2": 1, "1": 1}}))
    write_jsonl(run / "eval" / "bc" / "math-dev" / "trajectories.jsonl", [
        traj("a", correct=True, answer="1"), traj("b", answer="2", error="ZeroDivisionError: x\nmore"),
        traj("c", stopped="format_errors"), traj("d")])
    write_jsonl(run / "eval" / "bc" / "math-test" / "trajectories.jsonl", [traj("t", correct=True, answer="1")])
    steps = [{"step": k, "reward": r, "r1.0": 0.0, "r0.5": 0.0, "r0.1": 1.0, "r0": 0.0, "signal": s,
              "finished": 1.0, "turns": 2.0, "grad_norm": 0.5, "loss": 0.1}
             for k, r, s in ((1, 0.1, 0.0), (2, 0.2, 0.5), (3, 0.3, 0.5), (4, 0.5, 1.0))]
    write_jsonl(run / "score_rl" / "rl_log.jsonl", steps)

    out = subprocess.run([sys.executable, str(SCRIPT), str(run)], capture_output=True, text=True, check=True).stdout
    # 4 dev trajectories: one each correct / wrong answer / stopped unparseable / out of turns; 1 with an error
    assert "| bc | math-dev | 4 | 25% | 25% | 25% | 0% | 25% | 25% | 2.00 | 10 |" in out
    assert "math-test" not in out  # only the split asked for (dev)
    assert "-> ZeroDivisionError: x\n" in out  # the error's first line
    assert "| 1-2 | 0.150 | 25% | 100% |" in out and "| 3-4 | 0.400 | 75% | 100% |" in out
    assert "| 1 | 1 |" in out and "teacher tokens 1,234" in out
    test = subprocess.run([sys.executable, str(SCRIPT), str(run), "--split", "test"], capture_output=True,
                          text=True, check=True).stdout
    assert "| bc | math-test | 1 | 100% |" in test


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode != 0 and "not a run directory" in done.stderr
