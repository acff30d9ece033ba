"""The study's tools, on run directories written by hand (every figure known):
bench/study/diagnose.py says how a run's trajectories ended and how its RL moved;
bench/study/lever.py prepares a try of one stage with one setting changed."""

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
    write_jsonl(run / "tasks" / "math-dev.jsonl", [{"id": k, "meta": {"n_ops": 1 if k in "ab" else 2}} for k in "abcd"])
    write_jsonl(run / "tasks" / "search-dev.jsonl", [
        {"id": "s1", "answer": "X", "meta": {"form": "comparison", "direction": "later", "hops": 2,
                                             "compared": ["W", "X"]}},
        {"id": "s2", "meta": {"form": "bridge", "hops": 2}}])
    write_jsonl(run / "eval" / "bc" / "search-dev" / "trajectories.jsonl", [
        traj("s1", correct=True, answer="X"), traj("s2", answer="Y")])
    steps = [{"step": k, "reward": r, "r1.0": 0.0, "r0.5": 0.0, "r0.1": 1.0, "r0": 0.0, "signal": s,
              "finished": 1.0, "turns": 2.0, "grad_norm": 0.5, "loss": 0.1}
             for k, r, s in ((1, 0.1, 0.0), (2, 0.2, 0.5), (3, 0.3, 0.5), (4, 0.5, 1.0))]
    write_jsonl(run / "score_rl" / "rl_log.jsonl", steps)

    out = subprocess.run([sys.executable, str(SCRIPT), str(run)], capture_output=True, text=True, check=True).stdout
    # 4 dev trajectories: one each correct / wrong answer / stopped unparseable / out of turns; 1 with an error
    assert "| bc | math-dev | 4 | 25% | 25% | 25% | 0% | 25% | 25% | 2.00 | 10 |" in out
    # by shape: a and b take one operation (a solved), c and d two (neither solved)
    assert "| bc | math-dev | 1 operation: 1/2; 2 operations: 0/2 |" in out
    assert "| bc | search-dev | bridge, 2 hops: 0/1; comparison (later), 2 hops: 1/1 |" in out
    assert "| bc | search-dev | 1 | 0 | 0 | 1 |" in out  # right, with no search at all: a guess
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


def load_lever():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lever", SCRIPT.parent / "lever.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_lever_directory_starts_from_the_stages_the_lever_stage_reads(tmp_path: Path) -> None:
    """bench/study/lever.py: the stages score_rl reads from are done in the new folder, their
    models named in the source run; later stages and their results are not carried; the
    source is not written."""
    import pytest

    lever = load_lever()
    source = tmp_path / "seed0"
    done = ["world", "untrained", "bc", "mps", "split", "score_sft", "score_rl", "bc_full"]
    for d in ("tasks", "mps/export", "eval/bc/math-dev", "eval/score_rl/math-dev"):
        (source / d).mkdir(parents=True)
    (source / "tasks" / "math-dev.jsonl").write_text("{}\n")
    (source / "mps" / "export" / "rl_items.jsonl").write_text("{}\n")
    (source / "eval" / "bc" / "math-dev" / "metrics.json").write_text('{"accuracy": 0.5}')
    (source / "eval" / "score_rl" / "math-dev" / "metrics.json").write_text('{"accuracy": 0.9}')
    (source / "run_state.json").write_text(json.dumps({
        "done": done, "models": {"bc": "bc/sft/final", "score_sft": "score_sft/final", "score_rl": "score_rl/final"},
        "stages": {s: {"math:dev": {"accuracy": 0.1}} for s in ("untrained", "bc", "score_sft", "score_rl")},
        "teacher_tokens": {"bc": 10, "mps": 20, "score_rl": 0, "bc_full": 40},
        "wall_time_s": {"bc": 1.0, "eval_bc": 2.0, "score_rl": 3.0, "eval_score_rl": 4.0}, "extra": {}}))
    before = sorted((p.relative_to(source), p.read_bytes()) for p in source.rglob("*") if p.is_file())

    out = tmp_path / "lever"
    kept = lever.prepare(source, out, "score_rl")
    assert kept == ["world", "bc", "mps", "split", "score_sft"]
    state = json.loads((out / "run_state.json").read_text())
    assert state["done"] == kept
    assert state["models"] == {"bc": str((source / "bc/sft/final").resolve()),
                               "score_sft": str((source / "score_sft/final").resolve())}
    assert set(state["stages"]) == {"bc", "score_sft"} and set(state["teacher_tokens"]) == {"bc", "mps"}
    assert state["wall_time_s"] == {"bc": 1.0, "eval_bc": 2.0}
    assert (out / "eval" / "bc" / "math-dev" / "metrics.json").is_file() and not (out / "eval" / "score_rl").exists()
    assert (out / "mps" / "export" / "rl_items.jsonl").is_file() and (out / "tasks" / "math-dev.jsonl").is_file()
    assert sorted((p.relative_to(source), p.read_bytes()) for p in source.rglob("*") if p.is_file()) == before

    with pytest.raises(SystemExit, match="not empty"):
        lever.prepare(source, out, "score_rl")
    state_path = source / "run_state.json"
    state_path.write_text(json.dumps({"done": ["world", "bc", "mps", "split"], "models": {}}))
    with pytest.raises(SystemExit, match="reads from score_sft, not done"):
        lever.prepare(source, tmp_path / "other", "score_rl")
    with pytest.raises(SystemExit, match="not a stage"):
        lever.prepare(source, tmp_path / "other", "world")
