"""`score-distill report --evals DIR...`: the paper-style table of benchmark evaluations.

    score-distill report --evals runs/eval/*

Each DIR is an `eval --benchmark` output directory (its config.yaml names the model and the
benchmark, its metrics.json holds the scores). Prints the table (report.benchmark_summary).
"""

from __future__ import annotations

import argparse

HELP = "the paper-style table of `eval --benchmark` directories: per benchmark, and the averages"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--evals", nargs="+", required=True, metavar="DIR", help="eval --benchmark output directories")


def read_eval(directory: str) -> dict:
    """One evaluation: its model, benchmark and metrics, or a UsageError naming the directory."""
    import json
    from pathlib import Path

    import yaml

    from score_distill.config import UsageError

    d = Path(directory)
    try:
        cfg = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}
        metrics = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise UsageError(f"{d}: not a finished eval directory (config.yaml and metrics.json): {type(e).__name__}") from None
    if not cfg.get("benchmark"):
        raise UsageError(f"{d}: not an `eval --benchmark` directory (its config.yaml names no benchmark)")
    return {"model": cfg.get("model", "?"), "benchmark": str(cfg["benchmark"]).lower(), "metrics": metrics}


def run(args: argparse.Namespace) -> int:
    from score_distill.report import benchmark_summary

    print(benchmark_summary([read_eval(d) for d in args.evals]))
    return 0
