"""SFT's checkpoints, made safe to resume from: a checkpoint counts only once every process
has finished writing it (`resumable_checkpoint`, marked by `complete_checkpoints`), and one is
asked for every so many seconds of training (`checkpoint_timer`), so a run cut off loses
at most that much."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from score_distill.storage import atomic_write_json


COMPLETE = "complete.json"  # in a checkpoint directory: every process finished writing it


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[1])


def resumable_checkpoint(out: Path) -> Path | None:
    """The latest checkpoint in `out` that every process finished writing, or None.

    The trainer writes a checkpoint file by file into its final directory (weights,
    optimizer, scheduler, each process's RNG state, then the trainer state), so a run killed
    in the middle leaves a directory that looks like a checkpoint and is not one: resumed
    from, it loads some of the new state and restarts the step count at 0, and the model is
    no longer the one an uninterrupted run makes. `complete_checkpoints` marks a checkpoint
    once all processes are done with it; one without the mark is ignored (and replaced when
    the run gets there again).

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> for name in ("checkpoint-2", "checkpoint-3", "checkpoint-10.tmp"):
    ...     (out / name).mkdir()
    >>> _ = (out / "checkpoint-2" / COMPLETE).write_text("{}")
    >>> resumable_checkpoint(out).name  # checkpoint-3 was being written when the run stopped
    'checkpoint-2'
    """
    found = [p for p in out.glob("checkpoint-*") if p.name.split("-")[1].isdigit() and (p / COMPLETE).is_file()]
    return max(found, key=checkpoint_step) if found else None


def complete_checkpoints():  # noqa: ANN202 (a transformers TrainerCallback)
    """A callback that marks the checkpoint just saved as whole once every process has
    written its part (a barrier first), then deletes the older ones: at any moment the run
    directory holds a whole checkpoint to resume from, or none yet."""
    import torch
    from transformers import TrainerCallback

    class CompleteCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.barrier()
            if state.is_world_process_zero:
                out = Path(args.output_dir)
                saved = out / f"checkpoint-{state.global_step}"
                atomic_write_json(saved / COMPLETE, {"step": state.global_step})
                for old in out.glob("checkpoint-*"):
                    if old != saved and old.is_dir():
                        (old / COMPLETE).unlink(missing_ok=True)  # first: a half-deleted one is never resumed
                        shutil.rmtree(old, ignore_errors=True)
            return control

    return CompleteCheckpoints()


def checkpoint_timer(seconds: float):  # noqa: ANN202 (a transformers TrainerCallback)
    """A callback that asks for a checkpoint at the first step end `seconds` after the last
    one (or after the start); the final weights are saved separately, so none is written at
    the last step. On several processes the main process's clock decides for all: saving is
    collective (sharded weights and optimizer states), and clocks that disagreed would leave
    some processes waiting in it forever."""
    import torch
    from transformers import TrainerCallback

    class CheckpointTimer(TrainerCallback):
        def __init__(self) -> None:
            self.last = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            due = state.global_step < state.max_steps and time.monotonic() - self.last >= seconds
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                flag = torch.tensor([float(due)], device=args.device)
                torch.distributed.broadcast(flag, src=0)
                due = bool(flag.item())
            if due:
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            self.last = time.monotonic()
            return control

    return CheckpointTimer()
