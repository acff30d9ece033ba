"""Prepare a lever try: one stage of a study run entered again, with one setting changed,
in a new run directory that starts from the source run's finished stages.

    python bench/study/lever.py runs/study/seed0 runs/study/levers/rl-lr1e-4 --stage score_rl
    score-distill run --preset runs/study/seed0/config.yaml --out runs/study/levers/rl-lr1e-4 \\
        --only score_rl --eval-splits '[dev]' --rl.lr 0.0001

The new directory gets copies of what the stage reads that is small (the task sets, the MPS
export, the metrics of the stages before it) and a `run_state.json` in which the stages the
lever stage reads from are done, their models named by absolute path in the source run
(read, never written: the source run is left as it was). The printed command then runs the
stage alone under the source run's own settings (its resolved `config.yaml` as the preset)
with the one setting changed, and evaluates it on `dev` only, the split settings
are chosen on; `test` and `ood` stay unread until a setting is chosen. Rerunning that command
resumes the try. The stages must be those of score_distill.pipeline.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def prepare(source: Path, out: Path, stage: str) -> list[str]:
    """Write the lever directory `out` for entering `stage` again from `source`; return the
    stages it records as done. Raises SystemExit with one line on what is wrong."""
    from score_distill.pipeline import BY_NAME, lineage

    if stage not in BY_NAME or stage == "world":
        raise SystemExit(f"--stage {stage!r}: not a stage that makes a model ({', '.join(n for n in BY_NAME if n != 'world')})")
    state_path = source / "run_state.json"
    if not state_path.is_file():
        raise SystemExit(f"{source}: not a run directory (no run_state.json)")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} exists and is not empty: rerun the printed command to resume it, or pick a new folder")
    state = json.loads(state_path.read_text(encoding="utf-8"))
    needed = sorted(lineage(stage) - {stage, "world"})
    missing = [s for s in needed if s not in state.get("done", [])]
    if missing:
        raise SystemExit(f"{source}: {stage} reads from {', '.join(missing)}, not done there yet")
    kept = ["world"] + [s for s in state["done"] if s in needed]
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "tasks", out / "tasks")
    if "mps" in kept:
        shutil.copytree(source / "mps", out / "mps")
    for name in kept:
        for metrics in sorted((source / "eval" / name).glob("*/metrics.json")):
            target = out / "eval" / name / metrics.parent.name / "metrics.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(metrics, target)
    absolute = lambda p: p if Path(p).is_absolute() else str((source / p).resolve())  # noqa: E731
    lever_state = {
        "done": kept,
        "models": {k: absolute(v) for k, v in state.get("models", {}).items() if k in kept},
        "stages": {k: v for k, v in state.get("stages", {}).items() if k in kept},
        "teacher_tokens": {k: v for k, v in state.get("teacher_tokens", {}).items() if k in kept},
        "wall_time_s": {k: v for k, v in state.get("wall_time_s", {}).items()
                        if k in kept or k.removeprefix("eval_") in kept},
        "extra": state.get("extra", {}) | {"lever_source": str(source.resolve()), "lever_stage": stage},
    }
    (out / "run_state.json").write_text(json.dumps(lever_state, indent=1), encoding="utf-8")
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="a study run directory whose earlier stages are done")
    ap.add_argument("out", help="the new run directory of the try")
    ap.add_argument("--stage", default="score_rl", help="the stage entered again (default score_rl)")
    args = ap.parse_args()
    source, out = Path(args.source), Path(args.out)
    kept = prepare(source, out, args.stage)
    print(f"{out}: {', '.join(kept)} done (models from {source}); now run, with the one changed setting added:")
    print(f"score-distill run --preset {source / 'config.yaml'} --out {out} --only {args.stage} "
          "--eval-splits '[dev]' --SECTION.FIELD VALUE")


if __name__ == "__main__":
    main()
