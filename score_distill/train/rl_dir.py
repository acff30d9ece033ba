"""The RL stage's output directory: its config, the per-step JSONL log, sampled trajectories
for reading, checkpoints (model, tokenizer, optimizer state, step) and the final model. A
resumed run starts from the latest checkpoint and trims the log and samples of the steps
after it, which it redoes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from score_distill.storage import atomic_dir, atomic_write_lines, split_jsonl


class RLDir:
    """The run directory: config, JSONL log, samples, checkpoints and the final model."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out = Path(out_dir)
        self.final = self.out / "final"
        self.checkpoints = self.out / "checkpoints"
        self.log_path = self.out / "rl_log.jsonl"
        self.samples_path = self.out / "samples.jsonl"

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        found = sorted((int(p.name.split("-")[1]), p) for p in self.checkpoints.glob("step-*")
                       if (p / "state.json").is_file())
        return found[-1] if found else None

    def trim(self, step: int) -> None:
        """Drop log records and samples of steps after `step`: a resumed run redoes them."""
        trim_jsonl(self.log_path, lambda r: r["step"] <= step)
        trim_jsonl(self.samples_path, lambda r: r["meta"]["rl_step"] <= step)

    def append_log(self, record: dict[str, Any]) -> None:
        with self.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def save(self, target: Path, model: Any, tokenizer: Any, extra: dict[str, Any] | None = None) -> None:
        """Write a transformers-loadable directory atomically: tmp dir, then rename."""
        import torch

        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if extra is not None:
                torch.save(extra["optimizer"], tmp / "optimizer.pt")
                (tmp / "state.json").write_text(json.dumps({"step": extra["step"]}))


def trim_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    if not path.exists():
        return
    complete, tail = split_jsonl(path.read_bytes(), str(path))
    lines = []
    for line in [text for _, text in complete] + [tail.decode("utf-8", "replace")]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the torn last line of a killed run (torn anywhere)
            continue
        if keep(record):
            lines.append(line)
    atomic_write_lines(path, lines)  # a kill here keeps the old log whole


def save_checkpoint(files: RLDir, accelerator: Any, model: Any, tokenizer: Any, optimizer: Any, step: int) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        target = files.checkpoints / f"step-{step:06d}"
        files.checkpoints.mkdir(parents=True, exist_ok=True)
        files.save(target, accelerator.unwrap_model(model), tokenizer,
                   {"optimizer": optimizer.state_dict(), "step": step})
        for old in files.checkpoints.glob("step-*"):
            if old != target:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
