"""`score-distill sft`: fine-tune a model on an exported SFT set (cold-start BC or SCoRe-SFT).

    score-distill sft --model runs/demo/bc/sft/final --data runs/demo/mps/export --out runs/sft
    accelerate launch --config_file configs/accelerate/ddp.yaml -m score_distill sft --model M --data D --out O

Reads the `*_trajectories.jsonl` that `bc` or `mentor` wrote and writes OUT/final (a
transformers model directory), OUT/train_summary.json and OUT/config.yaml. Under `accelerate
launch` each process trains on its share of every optimiser step (the global batch is
`--batch-size` whatever the number of processes) and the main process writes. Killed at any
moment, the same command resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "fine-tune on an exported SFT set (alone or under accelerate launch)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from score_distill.commands.settings import SFTCommand
    from score_distill.config import add_command_arguments

    add_command_arguments(parser, SFTCommand)


def run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from score_distill.commands.settings import SFT_RESUME_FREE, data_file, is_main_process, read_data
    from score_distill.commands.settings import SFTCommand as command
    from score_distill.config import UsageError, command_config, save_config
    from score_distill.exports import read_sft_examples
    from score_distill.models.load import model_directory
    from score_distill.rundir import check_run_dir
    from score_distill.train.sft import SFTOptions, train_sft

    cfg = command_config(args, command)
    if not cfg.model or not cfg.data:
        raise UsageError("--model and --data are required")
    model = model_directory(cfg.model)
    examples = read_data(data_file(cfg.data, "*_trajectories.jsonl"), read_sft_examples)
    if not examples:
        raise UsageError(f"{cfg.data}: the SFT set is empty")
    if is_main_process():
        check_run_dir(args.out, cfg, SFT_RESUME_FREE)  # a rerun with other settings: refused before training
        save_config(cfg, Path(args.out) / "config.yaml")
    opts = SFTOptions(**{f.name: getattr(cfg, f.name) for f in fields(SFTOptions)})
    final = train_sft(model, examples, args.out, opts, device=cfg.device)
    if is_main_process():
        print(final)
    return 0
