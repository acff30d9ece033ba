"""`score-distill eval`: evaluate a model as a CodeAct agent on a task suite or file.

    score-distill eval --model smollm2-135m --tasks math:test --n 50 --out runs/eval-math
    score-distill eval --model openai:qwen2.5-72b@http://127.0.0.1:8000/v1 --tasks my.jsonl --out runs/x

Writes DIR/metrics.json, DIR/trajectories.jsonl and DIR/config.yaml; rerunning the same
command resumes, and a rerun with other settings is refused (exit 2), naming the fields
that differ. Every field of the config can be set as a flag (e.g. `--rollout.max-turns 6`,
`--tools.sandbox.timeout-s 5`).
"""

from __future__ import annotations

import argparse
from typing import Any
import json
import sys

HELP = "evaluate a model on tasks; writes metrics.json and trajectories.jsonl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from score_distill.commands.settings import EvalCommand
    from score_distill.config import add_command_arguments

    add_command_arguments(parser, EvalCommand, out_help="output directory")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from score_distill.config import command_config, save_config

    from score_distill.commands.settings import EVAL_RESUME_FREE, EvalCommand, judge_scorer
    from score_distill.tasks.benchmarks import read_benchmark
    from score_distill.evaluate import evaluate
    from score_distill.models.load import engine_settings, load_model
    from score_distill.rundir import check_run_dir
    from score_distill.tasks.load import TaskFileError, load_tasks

    cfg = command_config(args, EvalCommand)
    engine = engine_settings(cfg.model, cfg.device, cfg.bf16, cfg.engine)  # a device that is not here: refused first
    scorer, what = None, cfg.tasks
    if cfg.benchmark is not None:
        bench = benchmark_setup(cfg)
        what = bench.name
        scorer = judge_scorer(cfg.judge, Path(args.out) / "judge-cache") if bench.scorer == "llm" else None
    try:  # the whole task file is checked before anything is written or loaded
        if cfg.benchmark is not None:
            tasks = read_benchmark(cfg.data, cfg.benchmark)[: cfg.n]
        else:
            tasks = load_tasks(cfg.tasks, cfg.n, cfg.seed, corpus=cfg.tools.search.local_corpus())
    except TaskFileError as e:
        e.report(sys.stderr)
        return 2
    check_run_dir(args.out, cfg, EVAL_RESUME_FREE)  # before any work: never mix runs of two configs
    save_config(cfg, f"{args.out}/config.yaml")
    model = load_model(cfg.model, **engine)
    metrics = evaluate(model, tasks, args.out, cfg.tools, cfg.rollout, samples=cfg.samples, desc=f"eval {what}",
                       scorer=scorer)
    print(json.dumps({k: metrics[k] for k in ("accuracy", "ci95", "n") if k in metrics}))
    return 0


def benchmark_setup(cfg) -> Any:
    """The benchmark `cfg` names, checked with what it needs (a data file; a judge for the
    judged ones), as a usage error in one line."""
    from score_distill.config import UsageError
    from score_distill.tasks.benchmarks import benchmark

    try:
        bench = benchmark(cfg.benchmark)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if cfg.data is None:
        raise UsageError(f"--benchmark {bench.name} needs --data FILE (its data is not shipped)")
    if bench.scorer == "llm" and cfg.judge is None:
        raise UsageError(f"--benchmark {bench.name} is scored by an LLM judge: give --judge openai:<model>@<base-url>")
    return bench
