"""The CPU SFT loss at the trained positions only, against the model's own loss over every
position, side by side in one run: one training step (forward + backward, bf16 autocast) of
SmolLM2-135M on a 4 x 960 batch whose first half is masked (a prompt and observations), as
in the demo's SFT batches.

    .venv/bin/python bench/sft_loss_positions.py > bench/sft_loss_positions.txt
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from score_distill.models.builtin import builtin_path


def main(rows: int = 4, length: int = 960, reps: int = 3) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(builtin_path("smollm2-135m"), dtype=torch.float32).train()
    ids = torch.randint(0, model.config.vocab_size, (rows, length))
    labels = ids.clone()
    labels[:, : length // 2] = -100

    def every_position() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        return loss.item()

    def trained_positions() -> float:  # what train.sft's CPU trainer computes
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
            targets = labels[:, 1:]
            keep = targets != -100
            logits = model.get_output_embeddings()(hidden[:, :-1][keep])
            loss = F.cross_entropy(logits.float(), targets[keep])
        loss.backward()
        return loss.item()

    every_position()  # warm-up
    model.zero_grad()
    times: dict[str, list[float]] = {"every position": [], "trained positions": []}
    losses = {}
    for _ in range(reps):
        for name, step in (("every position", every_position), ("trained positions", trained_positions)):
            t0 = time.perf_counter()
            losses[name] = step()
            times[name].append(time.perf_counter() - t0)
            model.zero_grad()
    print(f"SmolLM2-135M, batch {rows} x {length}, half masked, bf16 autocast, {torch.get_num_threads()} threads, "
          f"{reps} alternating reps")
    for name, ts in times.items():
        print(f"{name:17s} step {min(ts):5.2f} s (best) {sum(ts) / len(ts):5.2f} s (mean) | loss {losses[name]:.4f}")
    best = {k: min(v) for k, v in times.items()}
    print(f"trained positions / every position: {best['trained positions'] / best['every position']:.2f} of the time")


if __name__ == "__main__":
    main()
