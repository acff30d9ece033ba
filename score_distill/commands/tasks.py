"""`score-distill tasks generate`: write generated tasks of a built-in suite as JSONL.

    score-distill tasks generate --suite math --split train --n 1000 --seed 0 --out data/math-train.jsonl

The file format is documented in `score_distill/tasks/load.py` (and the README); any
external benchmark in that format can be given to `--tasks` of every stage.
"""

from __future__ import annotations

import argparse

HELP = "generate tasks of a built-in suite (math, search) as JSONL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)
    gen = sub.add_parser("generate", help="generate tasks", description=HELP)
    gen.add_argument("--suite", required=True, choices=["math", "search"])
    gen.add_argument("--split", required=True, choices=["train", "dev", "test", "ood"])
    gen.add_argument("--n", type=int, required=True, help="number of tasks")
    gen.add_argument("--seed", type=int, default=0, help="world/generator seed (all splits of one seed share a world)")
    gen.add_argument("--out", required=True, help="output JSONL path")


def run(args: argparse.Namespace) -> int:
    from score_distill.tasks.load import generate_suite
    from score_distill.types import write_jsonl

    tasks = generate_suite(args.suite, args.split, args.n, args.seed)
    n = write_jsonl(args.out, tasks)
    print(f"wrote {n} {args.suite}:{args.split} tasks (seed {args.seed}) to {args.out}")
    return 0
