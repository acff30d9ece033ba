"""`score-distill mentor`: Mentored Problem-Solving (SCoRe stage 1).

    score-distill mentor --student smollm2-135m --teacher reference --tasks math:train --n 200 \
        --exclude runs/bc --out runs/mps
    score-distill mentor --student runs/bc/final --teacher openai:qwen2.5-72b@http://127.0.0.1:8000/v1 \
        --tasks my-train.jsonl --max-interventions 5 --out runs/mps

Writes DIR/records.jsonl (one line per finished task), mps_trajectories.jsonl, keysteps.jsonl,
summary.json, config.yaml and export/ (SFT/RL split, TRL/LLaMA-Factory/verl files), and
prints the summary. Killed at any moment, the same command resumes where it stopped. A
teacher whose endpoint fails `--teacher-down-after` calls in a row stops the run with one
line on stderr and exit code 3; rerun the same command when it is back: finished tasks are
kept and the tasks whose teacher calls failed are retried. Every
config field is a flag (e.g. `--rollout.temperature 0.6`, `--split.sft-share 0.5`); `--seed`
also seeds sampling and the split unless `--rollout.seed` / `--split.seed` are given.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "mentored problem-solving: student rollouts, teacher fixes at the first error; writes MPS records"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from score_distill.commands.settings import MentorCommand
    from score_distill.config import add_command_arguments

    add_command_arguments(parser, MentorCommand)


def seed_overrides(args: argparse.Namespace, sections: tuple[str, ...]) -> list[str]:
    """`--seed K` also sets `<section>.seed` for each section not given explicitly.

    >>> seed_overrides(argparse.Namespace(**{"seed": "3", "rollout.seed": None, "split.seed": "1"}), ("rollout", "split"))
    ['rollout.seed=3']
    """
    if getattr(args, "seed", None) is None:
        return []
    return [f"{s}.seed={args.seed}" for s in sections if getattr(args, f"{s}.seed", None) is None]


def excluded_ids(spec: str) -> set[str]:
    """Task ids to leave out: a BC output directory (its `chosen_ids.json`) or a JSON file
    holding a list of ids. A missing or malformed one is a usage error.

    >>> excluded_ids("no/such/dir")
    Traceback (most recent call last):
    ...
    score_distill.config.UsageError: --exclude no/such/dir: not a BC output directory or a JSON file of task ids
    """
    from pathlib import Path

    from score_distill.config import UsageError

    path = Path(spec)
    if path.is_dir():
        path = path / "chosen_ids.json"
    if not path.is_file():
        raise UsageError(f"--exclude {spec}: not a BC output directory or a JSON file of task ids")
    try:
        ids = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"--exclude {path}: not JSON ({e})") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise UsageError(f"--exclude {path}: expected a JSON list of task ids")
    return set(ids)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from score_distill.commands.settings import MENTOR_RESUME_FREE
    from score_distill.commands.settings import MentorCommand as command
    from score_distill.config import command_config
    from score_distill.models.load import engine_settings, load_model
    from score_distill.rundir import check_run_dir
    from score_distill.stages.mps import RESUME_FREE, mentor
    from score_distill.stages.split import read_mps_records, write_split
    from score_distill.storage import atomic_write_json
    from score_distill.tasks.load import TaskFileError, load_tasks
    from score_distill.teachers.load import load_teacher

    cfg = command_config(args, command, seed_overrides(args, ("rollout", "split")))
    student_engine = engine_settings(cfg.student, cfg.device, engine=cfg.engine)  # a device that is not here: refused first
    try:  # the whole task file is checked before anything is written or loaded
        tasks = load_tasks(cfg.tasks, cfg.n, cfg.seed, corpus=cfg.tools.search.local_corpus())
    except TaskFileError as e:
        e.report(sys.stderr)
        return 2
    if cfg.exclude:
        skip = excluded_ids(cfg.exclude)
        tasks = [t for t in tasks if t.id not in skip]
    from score_distill.tools.config import require_no_fetch

    require_no_fetch(cfg.tools)
    resume_free = RESUME_FREE + MENTOR_RESUME_FREE
    check_run_dir(args.out, cfg, resume_free)  # a rerun with other settings: refused before anything loads
    teacher = load_teacher(cfg.teacher, tools=cfg.tools, cache_dir=Path(args.out) / "teacher-cache")
    # A teacher that stays down raises TeacherDown: `cli.main` turns it into one line, exit 3.
    summary = mentor(load_model(cfg.student, **student_engine), teacher, tasks, args.out, cfg, resume_free)
    # Stage 2 on what stage 1 recorded.
    summary["export"] = write_split(read_mps_records(args.out), Path(args.out) / "export", cfg.split, tasks)
    atomic_write_json(Path(args.out) / "summary.json", summary)
    print(json.dumps(summary, indent=2))
    return 0
