"""The `score-distill` command: one entry point, one sub-command per stage.

Each sub-command lives in `score_distill/commands/<name>.py`, which defines
`HELP: str`, `add_arguments(parser)` and `run(args) -> int`. They are imported only when
used, so `score-distill exec` does not pay for importing torch.

    score-distill exec < cells.json           # run code cells in the sandbox
    score-distill tasks generate --suite math --split train --n 100 --out tasks.jsonl
    score-distill eval --model smollm2-135m --tasks math:test --n 50 --out runs/eval
    score-distill bc --teacher reference --tasks math:train --out runs/bc
    score-distill mentor --student smollm2-135m --teacher reference --tasks math:train --out runs/mps
    score-distill sft --model runs/bc/final --data runs/mps/export --out runs/sft
    score-distill rl --model runs/sft/final --items runs/mps/export --out runs/rl
    score-distill audit-teacher --teacher reference --suite math --n 20 --out runs/audit
    score-distill run --preset demo           # the whole pipeline
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module under score_distill.commands
COMMANDS: dict[str, str] = {
    "exec": "exec_cells",
    "tasks": "tasks",
    "eval": "evaluate",
    "benchmarks": "benchmarks",
    "report": "report",
    "bc": "bc",
    "mentor": "mentor",
    "sft": "sft",
    "rl": "rl",
    "audit-teacher": "audit_teacher",
    "run": "run",
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the `selected` sub-command's flags are built (building a command's
    flags may import its configs, which is slow for the ones that pull in torch or sympy).
    With no selection every command's flags are built."""
    parser = argparse.ArgumentParser(prog="score-distill", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"score_distill.commands.{module}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        if selected is None or selected == name:
            mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected if selected in COMMANDS else None).parse_args(argv)
    _show_our_logs()
    from score_distill.config import UsageError
    from score_distill.teachers.health import TeacherDown
    from score_distill.train.diverged import NonFiniteUpdate

    try:
        refuse_ranks(args.command)
        return int(args._run(args) or 0)
    except UsageError as exc:  # a mistake in what was given; anything else is ours and keeps its traceback
        print(f"score-distill {args.command}: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except TeacherDown as exc:  # the server's state, not a bug: one line, and a rerun resumes
        print(f"score-distill {args.command}: {one_line(str(exc))}", file=sys.stderr)
        return 3
    except NonFiniteUpdate as exc:  # the training diverged: say so, keep the weights unharmed
        print(f"score-distill {args.command}: {one_line(str(exc))}", file=sys.stderr)
        return 4


# The sub-commands that train as one of several processes (accelerate launch, torchrun).
RANKED = ("sft", "rl")


def refuse_ranks(command: str, env: dict[str, str] | None = None) -> None:
    """A sub-command other than `RANKED`, started as one of several processes, would run
    whole in every one of them (each writing the same records): a usage error.

    >>> refuse_ranks("sft", {"WORLD_SIZE": "8"}), refuse_ranks("run", {})
    (None, None)
    >>> refuse_ranks("mentor", {"WORLD_SIZE": "2"})
    Traceback (most recent call last):
    ...
    score_distill.config.UsageError: this command runs as one process (started here as one of 2); only sft and rl train under accelerate launch (README, "Several processes")
    """
    import os

    from score_distill.config import UsageError

    env = os.environ if env is None else env
    processes = int(env.get("WORLD_SIZE", "1") or 1)
    if processes > 1 and command not in RANKED:
        raise UsageError(f"this command runs as one process (started here as one of {processes}); only "
                         f"{' and '.join(RANKED)} train under accelerate launch (README, \"Several processes\")")


def one_line(message: str) -> str:
    """A message on one line (a YAML or JSON error names its place over several).

    >>> one_line("bad value\\n  in line 3\\n")
    'bad value; in line 3'
    """
    return "; ".join(part.strip() for part in message.splitlines() if part.strip())


def _show_our_logs() -> None:
    """Our INFO lines (RL steps, MPS rounds, saved checkpoints) on stderr; other libraries
    keep their own levels."""
    import logging

    ours = logging.getLogger("score_distill")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
