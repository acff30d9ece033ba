"""SFT training throughput on SmolLM2-135M: tokens/s and the fraction of the machine's
matmul peak, both measured in the same run.

    .venv/bin/python bench/sft_throughput.py > bench/sft_throughput.txt

Three layouts of the same data at the same precision (`bf16: auto`): padded micro-batches
of 4 (each padded to its longest), one sequence per forward pass, and packed rows
(`sft.packing`). The packed run takes 2 rows per optimiser step, about the 4 sequences of
the others (the mean sequence is ~500 tokens).

Peak: the best of a few large square matmuls (fp32 and bf16) on all threads. Training
FLOPs: 6 x parameters x tokens (forward + backward of the dense layers; attention adds a
few percent at these lengths and is left out, so the fraction is slightly understated).
The SFT run is the project's real path: reference trajectories rendered by
`train.render`, trained by `train.sft.train_sft` (TRL's SFTTrainer) for one epoch.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best observed GFLOP/s of an n x n matmul."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=32, help="training trajectories")
    ap.add_argument("--suite", default="math")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from score_distill.models.builtin import builtin_path
    from score_distill.tasks.load import generate_suite
    from score_distill.agent.steps import execute_steps
    from score_distill.tools.config import ToolConfig
    from score_distill.precision import resolve_bf16
    from score_distill.train.sft import SFTOptions, build_dataset, train_sft

    model_dir = builtin_path("smollm2-135m")
    tasks = generate_suite(args.suite, "train", args.n, seed=0)
    examples = [(t.question, execute_steps(t, t.reference or [], ToolConfig())) for t in tasks]
    tok = AutoTokenizer.from_pretrained(model_dir)
    ds = build_dataset(tok, examples, max_length=1024)
    tokens = sum(len(x) for x in ds["input_ids"])
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    print(f"# SFT throughput, SmolLM2-135M ({params / 1e6:.1f}M params), {len(ds)} {args.suite} reference "
          f"trajectories, {tokens} tokens (mean {statistics.mean(len(x) for x in ds['input_ids']):.0f}), "
          f"torch threads {torch.get_num_threads()}")
    bf16 = resolve_bf16("auto", "cpu")
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
    print(f"# precision: {'bf16 autocast' if bf16 else 'fp32'} (`bf16: auto` on this CPU, bench/precision.txt); "
          f"matmul peak {peak:.0f} GFLOP/s")
    print("| layout | seconds | tokens/s | achieved GFLOP/s | fraction of peak |")
    print("|---|---|---|---|---|")
    layouts = (("padded: 4 sequences per forward pass", dict(micro_batch_size=4, batch_size=4)),
               ("one sequence per forward pass", dict(micro_batch_size=1, batch_size=4)),
               ("packed: one row of up to 2,048 tokens per forward pass", dict(micro_batch_size=1, batch_size=2,
                                                                              packing=True, max_length=2048)))
    for name, layout in layouts:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            train_sft(model_dir, examples, out, SFTOptions(epochs=1, bf16=bf16, logging_steps=1000, **layout))
            dt = time.perf_counter() - t0
        flops = 6 * params * tokens / dt / 1e9
        print(f"| {name} | {dt:.1f} | {tokens / dt:.0f} | {flops:.1f} | {flops / peak:.2f} |", flush=True)

if __name__ == "__main__":
    main()
