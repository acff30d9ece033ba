"""`score-distill bc`: cold-start BC data (SCoRe stage 0): the teacher solves a fraction of
the training tasks; its correct solutions are kept.

    score-distill bc --teacher reference --tasks math:train --n 200 --fraction 0.2 --out runs/bc
    score-distill bc --teacher openai:qwen2.5-72b@http://127.0.0.1:8000/v1 --tasks my-train.jsonl --out runs/bc

Writes DIR/records.jsonl (one line per chosen task), bc_trajectories.jsonl (kept solutions
with real observations), chosen_ids.json, summary.json, config.yaml and export/ (TRL and
LLaMA-Factory files), and prints the summary. Killed at any moment, the same command
resumes. Every config field is a flag (e.g. `--tools.sandbox.timeout-s 5`).
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "cold-start BC data: teacher solutions of a fraction of the tasks, rejection-sampled"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from score_distill.commands.settings import BCCommand
    from score_distill.config import add_command_arguments

    add_command_arguments(parser, BCCommand)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from score_distill.commands.settings import BCCommand as command
    from score_distill.config import command_config
    from score_distill.rundir import check_run_dir
    from score_distill.stages.bc import RESUME_FREE, collect_bc
    from score_distill.tasks.load import TaskFileError, load_tasks
    from score_distill.teachers.llm import LLMTeacherConfig
    from score_distill.teachers.load import load_teacher

    cfg = command_config(args, command)
    try:  # the whole task file is checked before anything is written or loaded
        tasks = load_tasks(cfg.tasks, cfg.n, cfg.seed, corpus=cfg.tools.search.local_corpus())
    except TaskFileError as e:
        e.report(sys.stderr)
        return 2
    from score_distill.tools.config import require_no_fetch

    require_no_fetch(cfg.tools)
    check_run_dir(args.out, cfg, RESUME_FREE)  # a rerun with other settings: refused before anything loads
    # The LLM teacher solves within the same turn budget BC keeps solutions under.
    options = {} if cfg.teacher == "reference" else {"config": LLMTeacherConfig(max_turns=cfg.max_turns)}
    teacher = load_teacher(cfg.teacher, tools=cfg.tools, cache_dir=Path(args.out) / "teacher-cache", **options)
    summary = collect_bc(teacher, tasks, args.out, cfg)
    print(json.dumps(summary, indent=2))
    return 0
