"""Where the local engine's time goes on the demo's evaluation workload: a profile.

    python bench/decode_profile.py --student runs/demo/bc/sft/final > bench/decode_profile.txt

Runs the agent loop (continuous batching, greedy, 8 turns x 160 tokens, the demo's
`max_format_errors` and `max_repeats`) on `--n` tasks per set (math and search, test and
ood) with the student in the precision `bf16: auto` picks here, and times every dense
matmul (`F.linear`: the weights) and every attention call (`F.scaled_dot_product_attention`)
with a wall clock around it (the CPU runs them synchronously); the rest is everything else:
norms, rotary embeddings, sampling, KV bookkeeping, tools, parsing. (The torch profiler holds
every event of a run this long in memory: it passed 20 GB here.) The compute ceiling is what the generated tokens would cost at the machine's matmul
peak (2 x parameters x tokens / peak), so its ratio to the wall time is the fraction of the
machine the engine uses; prefill is not counted in it.
"""

from __future__ import annotations

import argparse
import time

import torch

MATH = {"max_ops": 3, "distractors": [0, 1], "ood_min_ops": 4, "ood_max_ops": 5}  # configs/demo.yaml


def matmul_peak(dtype: torch.dtype, n: int = 2048) -> float:
    """Best GFLOP/s of an n x n matmul over 10 tries, after 3 warm-ups (a single warm-up
    sometimes left the first tries at half speed here)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(10):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", required=True, help="a trained student directory (the demo's BC student)")
    ap.add_argument("--n", type=int, default=8, help="tasks per set")
    args = ap.parse_args()

    import torch.nn.functional as F

    from score_distill.agent.rollout import Episode, RolloutConfig, rollout
    from score_distill.models.local import LocalConfig, LocalModel
    from score_distill.precision import resolve_bf16
    from score_distill.tasks.load import generate_suite
    from score_distill.tools.config import ToolConfig

    bf16 = resolve_bf16("auto", "cpu")
    tasks = [t for suite in ("math", "search") for split in ("test", "ood")
             for t in generate_suite(suite, split, args.n, 0, **(MATH if suite == "math" else {}))]
    cfg = RolloutConfig(max_turns=8, max_new_tokens=160, batch_size=48, max_format_errors=2, max_repeats=1)
    engine = LocalModel(args.student, LocalConfig(dtype="bfloat16" if bf16 else "float32"))
    params = sum(p.numel() for p in engine.model.parameters())
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
    spent = {"linear": 0.0, "attention": 0.0}
    calls = {"linear": 0, "attention": 0}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            spent[name] += time.perf_counter() - t0
            calls[name] += 1
            return out
        return wrapper

    real_linear, real_sdpa = F.linear, F.scaled_dot_product_attention
    F.linear, F.scaled_dot_product_attention = timed("linear", real_linear), timed("attention", real_sdpa)
    try:
        t0 = time.perf_counter()
        trajs = rollout(engine, [Episode(t) for t in tasks], ToolConfig(), cfg)
        wall = time.perf_counter() - t0
    finally:
        F.linear, F.scaled_dot_product_attention = real_linear, real_sdpa
    tokens = sum(t.generated_tokens for t in trajs)
    prefilled = sum(t.prompt_tokens for t in trajs)
    ceiling = 2 * params * tokens / (peak * 1e9)
    print(f"# student {args.student}, {len(tasks)} tasks, {'bf16' if bf16 else 'fp32'} weights, batch "
          f"{cfg.batch_size}, {cfg.max_turns} turns x {cfg.max_new_tokens} tokens, greedy; torch threads "
          f"{torch.get_num_threads()}")
    print(f"wall {wall:.1f} s, {tokens} tokens generated ({tokens / wall:.1f} tok/s), {prefilled} prompt tokens "
          f"prefilled; matmul peak {peak:.0f} GFLOP/s; compute ceiling of the generated tokens {ceiling:.1f} s "
          f"= {ceiling / wall:.2f} of the wall time")
    print("| part | wall s | share | calls |")
    print("|---|---|---|---|")
    rest = wall - spent["linear"] - spent["attention"]
    for name, t, n in (("dense matmuls (F.linear)", spent["linear"], calls["linear"]),
                       ("attention (F.scaled_dot_product_attention)", spent["attention"], calls["attention"]),
                       ("everything else", rest, "")):
        print(f"| {name} | {t:.1f} | {t / wall:.2f} | {n} |")

if __name__ == "__main__":
    main()
