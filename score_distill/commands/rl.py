"""`score-distill rl`: SCoRe-RL on exported RL items: rollouts from each item's verified
prefix, the key-step reward, GRPO.

    score-distill rl --model runs/demo/score_sft/final --items runs/demo/mps/export --out runs/rl
    accelerate launch --config_file configs/accelerate/ddp.yaml -m score_distill rl --model M --items I --out O
    score-distill rl --model M --items I --out O --engine vllm          # one CUDA GPU

Reads the `rl_items.jsonl` that `mentor` wrote; the teacher (default: reference) judges
whether a rollout's key step is equivalent to the teacher's correction. Writes OUT/final,
OUT/rl_log.jsonl (one record per step), OUT/samples.jsonl, OUT/config.yaml and checkpoints.
Under `accelerate launch` each process rolls out its share of every step's items and the
update is the one a single process would make from the whole step; the main process
writes. Killed at any moment, the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "SCoRe-RL (GRPO from the verified prefix) on exported RL items (alone or under accelerate launch)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from score_distill.commands.settings import RLCommand
    from score_distill.config import add_command_arguments

    add_command_arguments(parser, RLCommand)


def run(args: argparse.Namespace) -> int:
    import sys
    from dataclasses import fields

    from score_distill.commands.settings import RL_RESUME_FREE, data_file, is_main_process, read_data
    from score_distill.commands.settings import RLCommand as command
    from score_distill.config import UsageError, command_config, save_config
    from score_distill.models.load import model_directory
    from score_distill.rundir import check_run_dir
    from score_distill.tasks.load import TaskFileError, load_tasks
    from score_distill.teachers.load import load_teacher
    from score_distill.train.rl import RLOptions, train_rl
    from score_distill.types import KeyStepItem, Task, read_jsonl

    cfg = command_config(args, command)
    if not cfg.model or not cfg.items:
        raise UsageError("--model and --items are required")
    items_path = data_file(cfg.items, "rl_items.jsonl")
    items = read_data(items_path, lambda p: read_jsonl(p, KeyStepItem))
    exported = items_path.with_name("rl_tasks.jsonl")  # what mentor wrote beside the items
    if cfg.tasks:
        try:
            tasks = load_tasks(cfg.tasks, cfg.n, cfg.task_seed, corpus=cfg.tools.search.local_corpus())
        except TaskFileError as e:
            e.report(sys.stderr)
            return 2
    elif exported.is_file():
        tasks = read_data(exported, lambda p: read_jsonl(p, Task))
    else:
        tasks = [Task(id=i.task_id, question=i.question, answer=i.answer, suite=i.suite) for i in items]
    from score_distill.tools.config import require_no_fetch

    require_no_fetch(cfg.tools)
    model = model_directory(cfg.model)
    if is_main_process():
        check_run_dir(args.out, cfg, RL_RESUME_FREE)  # a rerun with other settings: refused before training
        save_config(cfg, Path(args.out) / "config.yaml")
    teacher = load_teacher(cfg.teacher, tools=cfg.tools, cache_dir=Path(args.out) / "teacher-cache")
    opts = RLOptions(**{f.name: getattr(cfg, f.name) for f in fields(RLOptions)})
    final = train_rl(model, items, {t.id: t for t in tasks}, teacher, cfg.tools, args.out, opts,
                     device=cfg.device, engine=cfg.engine)
    if is_main_process():
        print(final)
    return 0
