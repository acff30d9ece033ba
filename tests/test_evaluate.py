"""The evaluation harness: scores, metrics files, and resuming without re-running work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from score_distill.agent.rollout import RolloutConfig
from score_distill.evaluate import evaluate, evaluate_sets
from score_distill.models.scripted import ScriptedModel
from score_distill.tools.config import ToolConfig
from score_distill.types import Task, Trajectory, read_jsonl


def policy(messages):
    if sum(m["role"] == "assistant" for m in messages) == 0:
        return "<first_thought>answer</first_thought>"
    guess = "42" if "forty-two" in messages[1]["content"] else "7"
    return f"<thought>t</thought>\n<code>\nfinal_answer({guess})\n</code>"


TASKS = [Task(id=f"t{i}", question=q, answer="42", suite="math") for i, q in enumerate(["forty-two?", "other?", "forty-two!"])]


def test_metrics_and_resume(tmp_path: Path) -> None:
    model = ScriptedModel(policy)
    m = evaluate(model, TASKS, tmp_path, ToolConfig(), RolloutConfig(), samples=2)
    assert m["n"] == 6 and abs(m["accuracy"] - 4 / 6) < 1e-9 and m["finish_rate"] == 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    trajs = read_jsonl(tmp_path / "trajectories.jsonl", Trajectory)
    assert sorted((t.task_id, t.meta["sample"]) for t in trajs) == [(t.id, k) for t in TASKS for k in range(2)]
    assert [t.meta["correct"] for t in trajs if t.task_id == "t1"] == [False, False]
    calls = len(model.batch_sizes)
    # A torn last line (a crash mid-write) is dropped and only that trajectory is redone.
    path = tmp_path / "trajectories.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])
    again = evaluate(model, TASKS, tmp_path, ToolConfig(), RolloutConfig(), samples=2)
    assert again["accuracy"] == m["accuracy"] and again["n"] == 6
    assert len(model.batch_sizes) - calls == 2  # one episode: a plan turn and an action turn
    assert len(read_jsonl(path, Trajectory)) == 6


def test_several_sets_share_one_rollout_and_keep_their_own_files(tmp_path: Path) -> None:
    other = [Task(id=f"u{i}", question=q, answer="7", suite="math") for i, q in enumerate(["x?", "forty-two?"])]
    sets = {"a": (TASKS, tmp_path / "a"), "b": (other, tmp_path / "b")}
    model = ScriptedModel(policy)
    res = evaluate_sets(model, sets, ToolConfig(), RolloutConfig(batch_size=8))
    assert res["a"]["n"] == 3 and abs(res["a"]["accuracy"] - 2 / 3) < 1e-9
    assert res["b"]["n"] == 2 and abs(res["b"]["accuracy"] - 1 / 2) < 1e-9
    assert max(model.batch_sizes) == 5  # the five episodes ran side by side
    for name, (tasks, out) in sets.items():
        assert sorted(t.task_id for t in read_jsonl(out / "trajectories.jsonl", Trajectory)) == sorted(t.id for t in tasks)
        assert json.loads((out / "metrics.json").read_text())["n"] == len(tasks)
    calls = len(model.batch_sizes)
    again = evaluate_sets(model, sets, ToolConfig(), RolloutConfig(batch_size=8))
    assert {k: v["accuracy"] for k, v in again.items()} == {"a": res["a"]["accuracy"], "b": res["b"]["accuracy"]}
    assert len(model.batch_sizes) == calls  # resumed: nothing ran again


def test_a_task_in_two_sets_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="in both"):
        evaluate_sets(ScriptedModel(policy), {"a": (TASKS, tmp_path / "a"), "b": (TASKS[:1], tmp_path / "b")},
                      ToolConfig(), RolloutConfig())


def test_eval_loads_a_local_student_in_the_precision_asked_for(tmp_path, monkeypatch):
    from score_distill import precision
    from score_distill.cli import main
    from score_distill.models.scripted import ScriptedModel

    seen = []
    monkeypatch.setattr("score_distill.models.load.load_model",
                        lambda spec, **kw: seen.append(kw) or ScriptedModel(lambda messages: "<thought>x</thought>"))
    monkeypatch.setattr(precision, "_cpu_native_bf16", lambda: False)
    base = ["eval", "--model", "tiny", "--tasks", "math:test", "--n", "1", "--rollout.max-turns", "1"]
    for i, extra in enumerate(([], ["--bf16", "true"])):
        assert main([*base, "--out", str(tmp_path / str(i)), *extra]) == 0
    assert seen == [{"engine": "local", "dtype": "float32", "device": "cpu"},
                    {"engine": "local", "dtype": "bfloat16", "device": "cpu"}]  # auto here, then forced
