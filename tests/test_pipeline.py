"""The main job's mechanics end to end on the tiny model (the `smoke` preset): every stage
runs, the report has the documented shape, and a rerun resumes instead of redoing work."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from score_distill.commands.run import preset_path
from score_distill.config import load_yaml
from score_distill.pipeline import RunConfig, run

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


@pytest.mark.parametrize("preset", sorted(p.stem for p in Path(preset_path("demo")).parent.glob("*.yaml")))
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
