"""`score-distill run`: the main job, from a preset under configs/ plus overrides.

    score-distill run --preset demo                 # writes runs/demo
    score-distill run --preset smoke --out runs/smoke --n-eval 8 --max-turns 6
    score-distill run --preset demo --only bc_full

Every field of the config is a flag named by its dotted path (config.add_arguments), as in
the other sub-commands; flags override the preset. `--only STAGE` / `--from STAGE` enter one
stage, or a stage and every later one (pipeline.STAGES).

The resolved config is saved as DIR/config.yaml; rerunning resumes from DIR's files, and a
rerun with other settings is refused (exit 2), naming the fields that differ.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the pipeline on the embedded world or your task files (presets: demo, smoke, study, paper)"

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
    from score_distill.config import add_arguments as add_config
    from score_distill.pipeline import STAGES, RunConfig

    STAGE_NAMES = [s.name for s in STAGES]

    parser.add_argument("--preset", default="demo", help="preset name under configs/ or a YAML path")
    parser.add_argument("--out", default=None, help="output directory (default runs/<preset>)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--only", default=None, metavar="STAGE", help=f"enter this stage alone ({', '.join(STAGE_NAMES)}); "
                       "the stages it reads from must be done")
    where.add_argument("--from", dest="start", default=None, metavar="STAGE",
                       help="enter this stage and every later one; the stages it reads from must be done")
    parser.add_argument("--check", action="store_true", help="check the preset and what it reads (student, task and "
                        "benchmark files, device) and print the stages it would run; run nothing")
    add_config(parser, RunConfig)
    # Caught only to say what to write instead: settings are flags, as in every sub-command.
    parser.add_argument("stray", nargs="*", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from score_distill.config import UsageError, load_yaml, overrides_from_args
    from score_distill.pipeline import RunConfig, run_pipeline
    from score_distill.report import markdown_table

    if args.stray:
        key, eq, value = args.stray[0].partition("=")
        hint = f": write --{key.replace('_', '-')} {value}" if eq else ""
        raise UsageError(f"unexpected argument {args.stray[0]!r}{hint} (settings are flags)")
    path = preset_path(args.preset)
    cfg = load_yaml(RunConfig, path, overrides_from_args(args, RunConfig))
    out = Path(args.out or f"runs/{path.stem}")
    if args.check:
        from score_distill.devices import resolve_device, training_device
        from score_distill.pipeline import check_inputs, plan

        found = check_inputs(cfg)
        device, _ = resolve_device(cfg.device), training_device(cfg.device)
        print("\n".join([f"preset: {path}", *found, f"teacher: {cfg.teacher}", f"device: {device}",
                          f"stages: {', '.join(plan(cfg, args.only, args.start))}", f"out: {out}"]))
        return 0
    report = run_pipeline(cfg, out, only=args.only, start=args.start)  # saves out/config.yaml, or refuses other settings
    print(markdown_table(report))
    print(f"report: {out / 'report.md'}")
    return 0
