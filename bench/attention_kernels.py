"""Attention forward + backward on the shapes of the RL update, three ways, side by side:
PyTorch's CPU flash kernel (what `scaled_dot_product_attention` picks with a mask), its math
kernel, and a plain matmul-softmax-matmul in bf16 with a float32 softmax.

    python bench/attention_kernels.py > bench/attention_kernels.txt

The shapes are SmolLM2-135M's (9 query heads, 3 key/value heads, head size 64), one row of
`queries` positions attending, under a causal mask, to a shared prefix of `prefix` positions
and to itself: a micro-batch of the update on top of its group's prefix
(`train/logprobs.py`). Work counted densely (the masked half included, as the kernels
compute it): 4 x heads x 64 x queries x keys for the forward, twice that for the backward.
Median of 5 after one warm-up; the fraction is of the bf16 matmul peak measured in the run.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, KV_HEADS, DIM = 9, 3, 64


def forward_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, how: str) -> None:
    kk, vv = k.repeat_interleave(HEADS // KV_HEADS, 1), v.repeat_interleave(HEADS // KV_HEADS, 1)
    if how == "plain":
        scores = (q @ kk.transpose(-1, -2)) * DIM**-0.5
        out = torch.softmax(scores.masked_fill(~mask, float("-inf")).float(), -1).to(q.dtype) @ vv
    else:
        backend = SDPBackend.FLASH_ATTENTION if how == "flash" else SDPBackend.MATH
        with sdpa_kernel([backend]):
            out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
    out.sum().backward()


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from decode_profile import matmul_peak

    torch.manual_seed(0)
    peak = matmul_peak(torch.bfloat16)
    print(f"# attention forward + backward, bf16, {HEADS} heads ({KV_HEADS} key/value), head size {DIM}; "
          f"bf16 matmul peak {peak:.0f} GFLOP/s; torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| queries | prefix | flash ms | math ms | plain ms | flash GFLOP/s | fraction of peak |")
    print("|---|---|---|---|---|---|---|")
    for queries, prefix in ((100, 300), (300, 600), (600, 600), (1000, 200)):
        keys = prefix + queries
        q = torch.randn(1, HEADS, queries, DIM, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, KV_HEADS, keys, DIM, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(1, KV_HEADS, keys, DIM, dtype=torch.bfloat16, requires_grad=True)
        mask = torch.ones(queries, keys, dtype=torch.bool).tril(prefix)[None, None]
        ms = {}
        for how in ("flash", "math", "plain"):
            forward_backward(q, k, v, mask, how)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                forward_backward(q, k, v, mask, how)
                times.append(time.perf_counter() - t0)
            ms[how] = statistics.median(times) * 1e3
        work = 3 * 4 * HEADS * DIM * queries * keys
        rate = work / ms["flash"] / 1e6
        print(f"| {queries} | {prefix} | {ms['flash']:.1f} | {ms['math']:.1f} | {ms['plain']:.1f} | {rate:.0f} | "
              f"{rate / peak:.2f} |")


if __name__ == "__main__":
    main()
