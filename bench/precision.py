"""fp32 against bf16 on this machine, side by side in one run: what `bf16: auto` decides.

    python bench/precision.py > bench/precision.txt

Prints the CPU's bf16 flags and what `precision.native_bf16("cpu")` concludes, then, for
each dtype: matmul rates at the shapes of SmolLM2-135M (a decoding step's 20 rows, a
training micro-batch's 512 rows, the LM head), one training step of SmolLM2-135M on 512
tokens (forward + backward, fp32 weights, bf16 under autocast as SFT and RL run it), and
the local engine decoding 16 rows (bf16 weights against fp32 weights).
"""

from __future__ import annotations

import time

import torch


def rate(fn, work: float, seconds: float = 1.0) -> float:
    """`work` units (flops, tokens) per second of `fn`."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return work * n / (time.perf_counter() - t0)


def main() -> None:
    from score_distill.models.base import GenRequest, SamplingParams
    from score_distill.models.builtin import builtin_path
    from score_distill.models.local import LocalConfig, LocalModel
    from score_distill.precision import native_bf16
    from transformers import AutoModelForCausalLM

    flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"bf16 flags: {[f for f in flags if 'bf16' in f or 'amx' in f] or 'none'}; "
          f"native_bf16('cpu') = {native_bf16('cpu')}")
    print("| measurement | fp32 | bf16 | bf16 / fp32 |")
    print("|---|---|---|---|")
    for m, k, n in ((20, 576, 1536), (512, 576, 1536), (512, 1536, 576), (512, 576, 49152)):
        r = {}
        for dt in (torch.float32, torch.bfloat16):
            a, w = torch.randn(m, k, dtype=dt), torch.randn(n, k, dtype=dt)
            r[dt] = rate(lambda: torch.nn.functional.linear(a, w), 2 * m * k * n) / 1e9
        print(f"| matmul ({m} x {k}) x ({k} x {n}), GFLOP/s | {r[torch.float32]:.0f} | {r[torch.bfloat16]:.0f} "
              f"| {r[torch.bfloat16] / r[torch.float32]:.2f} |")
    path = builtin_path("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    ids = torch.randint(0, 49000, (1, 512))
    r = {}
    for bf16 in (False, True):
        def train_step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        r[bf16] = rate(train_step, 512, 5.0)  # tokens per second
    print(f"| SmolLM2-135M forward + backward, 512 tokens, tok/s | {r[False]:.0f} | {r[True]:.0f} "
          f"| {r[True] / r[False]:.2f} |")
    del model
    r = {}
    text = "Compute the sum of the first twenty primes, then explain each step. " * 12
    for dtype in ("float32", "bfloat16"):
        engine = LocalModel(path, LocalConfig(dtype=dtype))
        reqs = [GenRequest([{"role": "user", "content": f"{i}. {text}"}], seed=i) for i in range(16)]
        params = SamplingParams(temperature=0.0, max_new_tokens=64, stop=())
        engine.generate(reqs[:2], SamplingParams(max_new_tokens=2, stop=()))
        t0 = time.perf_counter()
        out = engine.generate(reqs, params)
        r[dtype] = sum(len(g.token_ids) for g in out) / (time.perf_counter() - t0)
    print(f"| local engine, 16 rows x 64 tokens after a ~200-token prompt, tok/s | {r['float32']:.0f} "
          f"| {r['bfloat16']:.0f} | {r['bfloat16'] / r['float32']:.2f} |")


if __name__ == "__main__":
    main()
