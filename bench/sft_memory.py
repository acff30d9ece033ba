"""Peak memory of one SFT step of SmolLM2-135M: sequences per forward pass x recomputation.

    python bench/sft_memory.py B RECOMPUTE T      # e.g. 4 0 1536: four rows, no recompute
    for c in "4 0" "4 1" "1 0" "1 1"; do python bench/sft_memory.py $c 1536; done

Loads the student in fp32 with AdamW (the SFT set-up), then runs two optimiser steps on a
batch of B random sequences of T tokens under bf16 autocast, the loss computed as the CPU
SFT path does (`train.sft.chunked_cross_entropy`: the LM head only on the trained positions,
at most 2,000 of them here, in chunks recomputed in the backward pass). With
B > 1 every row but the first is half padding, as in a length-grouped batch. Prints the
process's peak resident memory (ru_maxrss) and the wall time of the two steps (one thread;
the wall time is not a speed measurement: the runs in sft_memory.txt shared the machine).
"""

from __future__ import annotations

import resource
import sys
import time

import torch
from transformers import AutoModelForCausalLM

from score_distill.models.builtin import builtin_path
from score_distill.train.sft import chunked_cross_entropy


def main(rows: int, recompute: bool, tokens: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(builtin_path("smollm2-135m"), dtype=torch.float32)
    if recompute:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, 49000, (rows, tokens))
    mask = torch.ones(rows, tokens, dtype=torch.long)
    mask[1:, tokens // 2:] = 0  # padding, as in a batch grouped by length
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            trained = hidden[:, :-1][mask[:, 1:].bool()][:2000]
            loss = chunked_cross_entropy(model.get_output_embeddings(), trained,
                                         torch.zeros(len(trained), dtype=torch.long)) / len(trained)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"B={rows} recompute={recompute} T={tokens}: peak {peak / 2**20:.2f} GiB "
          f"(after load {after_load / 2**20:.2f}) {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]))
