"""SFT training throughput on SmolLM2-135M: tokens/s and the fraction of the machine's
matmul peak, both measured in the same run.

    .venv/bin/python bench/sft_throughput.py > bench/sft_throughput.txt

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
    ap.add_argument("--n", type=int, default=48, help="training trajectories")
    ap.add_argument("--suite", default="math")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from score_distill.models.builtin import builtin_path
    from score_distill.tasks.load import generate_suite
    from score_distill.bc import execute_steps
    from score_distill.tools.config import ToolConfig
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
    print("| run | seconds | tokens/s | achieved GFLOP/s | matmul peak GFLOP/s | fraction of peak |")
    print("|---|---|---|---|---|---|")
    for bf16 in (True, False):
        peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            train_sft(model_dir, examples, out, SFTOptions(epochs=1, bf16=bf16, logging_steps=1000))
            dt = time.perf_counter() - t0
        flops = 6 * params * tokens / dt / 1e9
        print(f"| {'bf16 autocast' if bf16 else 'fp32'} | {dt:.1f} | {tokens / dt:.0f} | {flops:.1f} | {peak:.0f} | "
              f"{flops / peak:.2f} |", flush=True)


if __name__ == "__main__":
    main()
