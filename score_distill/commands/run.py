"""`score-distill run`: the main job, from a preset under configs/ plus overrides.

    score-distill run --preset demo                 # writes runs/demo
    score-distill run --preset smoke --out runs/smoke n_eval=8 rollout.max_turns=6

The resolved config is saved as DIR/config.yaml; rerunning resumes from DIR's files, and a
rerun with other settings is refused (exit 2), naming the fields that differ.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the pipeline on the embedded world (presets: demo, smoke)"

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def preset_path(name: str) -> Path:
    """A preset name (configs/<name>.yaml) or a path to a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    for base in (Path("configs"), REPO_CONFIGS):
        if (base / f"{name}.yaml").exists():
            return base / f"{name}.yaml"
    raise SystemExit(f"no preset {name!r}: expected configs/{name}.yaml or a YAML path")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="demo", help="preset name under configs/ or a YAML path")
    parser.add_argument("--out", default=None, help="output directory (default runs/<preset>)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any config value, e.g. n_eval=16")


def run(args: argparse.Namespace) -> int:
    from score_distill.config import load_yaml
    from score_distill.pipeline import RunConfig, run as run_pipeline
    from score_distill.report import markdown_table

    path = preset_path(args.preset)
    cfg = load_yaml(RunConfig, path, args.overrides)
    out = Path(args.out or f"runs/{path.stem}")
    report = run_pipeline(cfg, out)  # saves out/config.yaml, or refuses other settings
    print(markdown_table(report))
    print(f"report: {out / 'report.md'}")
    return 0
