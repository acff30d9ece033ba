"""The main job's mechanics end to end on the tiny model (the `smoke` preset): every stage
runs, the report has the documented shape, and a rerun resumes instead of redoing work."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from score_distill.commands.run import preset_path
from score_distill.config import load_yaml
from score_distill.pipeline import RunConfig, run_pipeline as run

STAGES = ["untrained", "bc", "score_sft", "score_rl", "bc_full"]


@pytest.mark.slow
def test_smoke_preset_runs_every_stage_and_resumes(tmp_path: Path) -> None:
    cfg = load_yaml(RunConfig, preset_path("smoke"))
    t0 = time.perf_counter()
    report = run(cfg, tmp_path)
    first = time.perf_counter() - t0
    assert list(report["stages"]) == STAGES
    sets = {f"{s}:{k}" for s in cfg.suites for k in cfg.eval_splits}
    for stage in STAGES:
        assert set(report["stages"][stage]) == sets
        for entry in report["stages"][stage].values():
            assert entry["n"] == cfg.n_eval and 0.0 <= entry["ci95"][0] <= entry["accuracy"] <= entry["ci95"][1] <= 1.0
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["stages"] == report["stages"]
    assert set(on_disk["teacher_tokens"]) >= {"bc", "mps", "bc_full"}
    # BC-full asks the teacher for every train task, BC for a fifth of them.
    assert on_disk["teacher_tokens"]["bc_full"] > on_disk["teacher_tokens"]["bc"] > 0
    for name in ("report.md", "accuracy.png", "rl_reward.png", "score_rl/rl_log.jsonl", "mps/summary.json"):
        assert (tmp_path / name).is_file(), name
    assert "| score_rl |" in (tmp_path / "report.md").read_text()
    # A rerun finds every stage's outputs and redoes nothing expensive.
    t0 = time.perf_counter()
    again = run(cfg, tmp_path)
    assert again["stages"] == report["stages"]
    assert time.perf_counter() - t0 < first / 2


WORLD_PRESETS = sorted(p.stem for p in Path(preset_path("demo")).parent.glob("*.yaml")
                       if "train_tasks:" not in p.read_text())  # paper.yaml reads your files: test_paper_preset.py


def test_task_files_and_benchmarks_replace_the_generated_sets(tmp_path: Path) -> None:
    """train_tasks gives a suite's train set, benchmarks are evaluated as sets of their own
    and scored by their benchmark, and the reference check covers the generated sets only."""
    from score_distill.tasks.load import generate_suite
    from score_distill.types import write_jsonl

    train = generate_suite("math", "train", 5, seed=3)
    write_jsonl(tmp_path / "train.jsonl", train)
    (tmp_path / "bamboogle.jsonl").write_text('{"question": "Who?", "answer": "Ada Lovelace"}\n')
    cfg = load_yaml(RunConfig, preset_path("smoke"), ["suites=[math]", "eval_splits=[test]", "n_eval=2",
                                                       f"train_tasks={{math: {tmp_path / 'train.jsonl'}}}",
                                                       f"benchmarks={{bamboogle: {tmp_path / 'bamboogle.jsonl'}}}"])
    report = run(cfg, tmp_path / "run", only="untrained")
    assert set(report["stages"]["untrained"]) == {"math:test", "bamboogle:benchmark"}
    assert report["stages"]["untrained"]["bamboogle:benchmark"]["n"] == 1
    assert list(report["reference_check"]) == ["math:test"]
    [traj] = [json.loads(line) for line in (tmp_path / "run" / "eval" / "untrained" / "bamboogle-benchmark" /
                                            "trajectories.jsonl").read_text().splitlines()]
    assert traj["task_id"] == "bamboogle-1"
    assert not (tmp_path / "run" / "tasks" / "math-train.jsonl").exists()  # not generated: read from the file


@pytest.mark.parametrize("preset", WORLD_PRESETS)
def test_every_preset_builds_its_world_with_its_own_dials(preset: str, tmp_path: Path) -> None:
    """Each preset's difficulty dials are valid and reach the generated tasks, and a sample of
    its reference solutions reaches the gold answers in the sandbox (world_stage checks that)."""
    from score_distill.pipeline import RunState, world_stage

    cfg = load_yaml(RunConfig, preset_path(preset), ["n_train=6", "n_eval=4", "n_reference_check=2"])
    state = RunState(cfg, tmp_path)
    world_stage(state)
    assert set(state.sets) == {f"{s}:{sp}" for s in cfg.suites for sp in ["train", *cfg.eval_splits]}
    for name, tasks in state.sets.items():
        suite = name.split(":")[0]
        assert len(tasks) == (6 if name.endswith(":train") else 4)
        for dial, value in cfg.difficulty.get(suite, {}).items():
            if suite == "math":  # math tasks record the dials they were made with
                recorded = tasks[0].meta["difficulty"][dial]
                assert recorded == (list(value) if isinstance(value, (list, tuple)) else value), (name, dial)
        if suite == "math" and "max_ops" in cfg.difficulty.get("math", {}):
            d = cfg.difficulty["math"]
            ood = name.endswith(":ood")
            lo, hi = (d["ood_min_ops"], d["ood_max_ops"]) if ood else (d.get("min_ops", 1), d["max_ops"])
            assert all(lo <= t.meta["n_ops"] <= hi for t in tasks), name
    refs = json.loads((tmp_path / "tasks" / "reference_check.json").read_text())
    assert all(v["checked"] == 2 and v["reached_gold"] == 2 for v in refs.values())


@pytest.fixture
def stub_stages(monkeypatch):
    """The run's table with every stage's work replaced by a note of the call (the world and
    the evaluations too): the runner's bookkeeping alone, in milliseconds."""
    from score_distill import pipeline

    calls: list[str] = []

    def stub(stage):
        def work(state):
            calls.append(stage.name)
            if stage.name == "world":
                state.sets = {f"{s}:{k}": [] for s in state.cfg.suites for k in ["train", *state.cfg.eval_splits]}
                return None
            if stage.name in fail:
                raise RuntimeError(f"{stage.name} killed")
            state.teacher_tokens[stage.name] = {"bc": 10, "mps": 5, "bc_full": 40}.get(stage.name, 0)
            return None if not stage.evaluated else f"{state.out}/{stage.name}/final"
        return work

    fail: set[str] = set()
    table = tuple(dataclasses.replace(s, run=stub(s)) for s in pipeline.STAGES)
    monkeypatch.setattr(pipeline, "STAGES", table)
    monkeypatch.setattr(pipeline, "BY_NAME", {s.name: s for s in table})
    monkeypatch.setattr(pipeline.table, "BY_NAME", {s.name: s for s in table})  # lineage reads it there

    def evaluate(state, stage, model):
        calls.append(f"eval_{stage}")
        state.stages[stage] = {"math:test": {"accuracy": 0.0, "ci95": [0.0, 0.5], "n": 1, "model": model}}

    monkeypatch.setattr(pipeline, "evaluate_stage", evaluate)
    return calls, fail


def test_the_stage_table_drives_resume_only_and_from(stub_stages, tmp_path: Path) -> None:
    from score_distill.config import UsageError
    from score_distill.pipeline import STAGES

    calls, fail = stub_stages
    cfg = RunConfig(student="tiny", n_train=2, n_eval=1)
    fail.add("score_rl")
    with pytest.raises(RuntimeError, match="score_rl killed"):
        run(cfg, tmp_path)
    assert calls == ["world", "untrained", "eval_untrained", "bc", "eval_bc", "mps", "split", "score_sft",
                     "eval_score_sft", "score_rl"]
    # The run cut off keeps the report of the stages it evaluated (written after each evaluation).
    partial = json.loads((tmp_path / "report.json").read_text())
    assert list(partial["stages"]) == ["untrained", "bc", "score_sft"]
    assert "| score_sft |" in (tmp_path / "report.md").read_text()
    # Resumed: the stages done are skipped, the run goes on from the one that was killed.
    fail.clear()
    calls.clear()
    report = run(cfg, tmp_path)
    assert calls == ["world", "score_rl", "eval_score_rl", "bc_full", "eval_bc_full"]
    assert list(report["stages"]) == STAGES_EVALUATED
    # Each model's teacher tokens are those of every stage it reads from, by the table.
    assert report["teacher_tokens_cumulative"] == {"bc": 10, "score_sft": 15, "score_rl": 15, "bc_full": 40}
    calls.clear()
    assert list(run(cfg, tmp_path)["stages"]) == STAGES_EVALUATED and calls == ["world"]
    # --only enters one stage again (it finds its work on disk), --from a stage and the later ones.
    run(cfg, tmp_path, only="score_sft")
    assert calls == ["world", "world", "score_sft", "eval_score_sft"]
    calls.clear()
    run(cfg, tmp_path, start="score_rl")
    assert calls == ["world", "score_rl", "eval_score_rl", "bc_full", "eval_bc_full"]
    # A stage whose inputs are not done is refused, naming them; so are names the run lacks.
    with pytest.raises(UsageError, match="score_rl reads from score_sft, split, not done"):
        run(cfg, tmp_path / "fresh", only="score_rl")
    with pytest.raises(UsageError, match="--only grpo: not a stage of this run .an ablation"):
        run(cfg, tmp_path, only="grpo")
    with pytest.raises(UsageError, match="--from nope: not a stage"):
        run(cfg, tmp_path, start="nope")
    with pytest.raises(UsageError, match=r"unknown ablations \['foo'\]"):
        run(dataclasses.replace(cfg, ablations=["foo"]), tmp_path)
    # An ablation added later runs alone; the others are done.
    calls.clear()
    with_grpo = dataclasses.replace(cfg, ablations=["grpo"])
    assert "grpo" in run(with_grpo, tmp_path)["stages"] and calls == ["world", "grpo", "eval_grpo"]
    assert [s.name for s in STAGES if s.ablation] == ["grpo", "rl_no_short_horizon", "rl_no_key_step"]


STAGES_EVALUATED = ["untrained", "bc", "score_sft", "score_rl", "bc_full"]


def test_a_stage_killed_while_it_runs_keeps_its_time(tmp_path: Path) -> None:
    """No `finally` runs under SIGKILL: the stage's time comes from what `timed` wrote while
    it ran, and the invocation that resumes the stage adds to it."""
    import signal
    import subprocess
    import sys

    from score_distill.pipeline import _load_state
    from score_distill.pipeline.config import RUNNING_WALL

    script = ("import time\nfrom pathlib import Path\nimport score_distill.pipeline.config as c\n"
              "c.WALL_BEAT_S = 0.05\n"
              f"state = c.RunState(c.RunConfig(), Path({str(tmp_path)!r}), wall={{'bc': 7.0}})\n"
              "with state.timed('score_rl'):\n    time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            path = tmp_path / RUNNING_WALL
            if path.is_file() and json.loads(path.read_text()).get("score_rl", 0) >= 0.3:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the running stage never wrote its time")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    state = _load_state(RunConfig(), tmp_path)
    assert state.wall["bc"] == 7.0 and state.wall["score_rl"] >= 0.3
    kept = state.wall["score_rl"]
    with state.timed("score_rl"):  # resumed: its time adds to what the killed run spent
        time.sleep(0.1)
    assert state.wall["score_rl"] >= kept + 0.1
    assert json.loads((tmp_path / RUNNING_WALL).read_text())["score_rl"] == state.wall["score_rl"]
