"""Agent-loop generation speed: every candidate side by side in one run, against plain
Hugging Face `generate` at the same batch and the machine's compute ceiling.

    python bench/decode_speed.py --student runs/demo/bc/sft/final > bench/decode_speed.txt

Two workloads, each run once per candidate in the same process:
- `demo`: the demo's evaluation (12 tasks per set: math and search, test and ood, with the
  demo's difficulty dials; greedy; 8 turns x 160 tokens; batch 48) with `--student`;
- `synthetic`: the workload of `rollout_throughput.py` (16 math:test tasks, 4 turns x 64
  tokens, batch 16) with the built-in SmolLM2-135M.

Every candidate runs in the precision `bf16: auto` picks on this machine (bf16 weights where
the CPU computes bf16 natively), as `score-distill eval` and the pipeline run it:
- `engine, transformers step`: our engine with every decoding step through the transformers
  forward (`LocalConfig.lean_decode=False`): the engine before the lean step;
- `engine, lean step`: the default (`models/lean_decode.py`);
- plain `generate` on the same first prompts at the same batch, greedy, as many new tokens per
  row as the agent loop generated per trajectory on average, in bf16 and in fp32 (the issue's
  "best dtype" is whichever is faster here).

Columns: tok/s = generated tokens / wall time (tools and bookkeeping included); "same
episodes" = trajectories step for step identical to the first candidate's (greedy, so they
differ only after a near-tie whose order bf16 rounding flips); "decode s" / "prefill s" = time
in decoding forward passes (one token a row) and in prompt forward passes, the rest being
sampling, stop checks, KV bookkeeping, tools and parsing; "rows" and "width" = mean rows and
mean KV columns of a decoding pass; "ceiling" = 2 x parameters x tok/s / the matmul peak of
the precision used (the fraction of the machine's arithmetic the generated tokens are worth;
prompt tokens are not counted, so it understates the work done).
"""

from __future__ import annotations

import argparse
import time

import torch

MATH = {"max_ops": 3, "distractors": [0, 1], "ood_min_ops": 4, "ood_max_ops": 5}  # configs/demo.yaml


def run_engine(path: str, tasks: list, cfg, dtype: str, lean: bool) -> dict:
    from score_distill.agent.rollout import Episode, rollout
    from score_distill.models.local import LocalConfig, LocalModel
    from score_distill.tools.config import ToolConfig

    engine = LocalModel(path, LocalConfig(dtype=dtype, lean_decode=lean))
    params = sum(p.numel() for p in engine.model.parameters())
    passes: list[tuple[int, int]] = []
    spent = {"decode": 0.0, "prefill": 0.0}
    forward = engine.forward

    def timed(batch, ids):
        t0 = time.perf_counter()
        logits = forward(batch, ids)
        kind = "decode" if ids.shape[1] == 1 else "prefill"
        spent[kind] += time.perf_counter() - t0
        if kind == "decode":
            passes.append((ids.shape[0], batch.end - batch.start))
        return logits

    engine.forward = timed
    rollout(engine, [Episode(tasks[0])], ToolConfig(), type(cfg)(max_turns=2, max_new_tokens=8))  # warm-up
    passes.clear()
    spent.update(decode=0.0, prefill=0.0)
    t0 = time.perf_counter()
    trajs = rollout(engine, [Episode(t) for t in tasks], ToolConfig(), cfg)
    wall = time.perf_counter() - t0
    tokens = sum(t.generated_tokens for t in trajs)
    return {"tokens": tokens, "wall": wall, "trajs": trajs, "passes": passes, "params": params, **spent}


def plain_generate(path: str, prompts: list, batch: int, new_tokens: int, dtype: torch.dtype) -> tuple[int, float]:
    """Tokens made and seconds spent by `model.generate` over `prompts`, `batch` at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    made, spent = 0, 0.0
    for lo in range(0, len(prompts), batch):
        texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts[lo : lo + batch]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            spent += time.perf_counter() - t0
        made += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return made, spent


def workload(name: str, path: str, tasks: list, cfg, peak: float, dtype: str) -> tuple[list[str], dict]:
    from score_distill.agent.format import to_messages

    lines = [f"## {name}: {len(tasks)} tasks, batch {cfg.batch_size}, {cfg.max_turns} turns x {cfg.max_new_tokens} "
             f"tokens, greedy; model {path}; weights {dtype}",
             "| candidate | tokens | wall s | tok/s | vs transformers step | same episodes | decode s | prefill s "
             "| rows | width | ceiling |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rates: dict[str, float] = {}
    base = None
    for label, lean in (("engine, transformers step", False), ("engine, lean step (default)", True)):
        r = run_engine(path, tasks, cfg, dtype, lean)
        tps = rates[label] = r["tokens"] / r["wall"]
        base = base or r
        n_params = r["params"]
        same = sum(a.steps == b.steps for a, b in zip(base["trajs"], r["trajs"]))
        rows = sum(p[0] for p in r["passes"]) / max(1, len(r["passes"]))
        width = sum(p[1] for p in r["passes"]) / max(1, len(r["passes"]))
        lines.append(f"| {label} | {r['tokens']} | {r['wall']:.1f} | {tps:.1f} | "
                     f"{tps / rates['engine, transformers step']:.2f} | {same}/{len(tasks)} | {r['decode']:.1f} | "
                     f"{r['prefill']:.1f} | {rows:.1f} | {width:.0f} | {2 * n_params * tps / (peak * 1e9):.2f} |")
        print(lines[-1], flush=True)
    per_row = max(1, round(base["tokens"] / len(tasks)))
    prompts = [to_messages(t.question, []) for t in tasks]
    for plain_dtype in (torch.bfloat16, torch.float32):
        made, spent = plain_generate(path, prompts, cfg.batch_size, per_row, plain_dtype)
        label = f"plain HF generate, {str(plain_dtype).split('.')[1]}"
        tps = rates[label] = made / spent
        lines.append(f"| {label}, {per_row} new tokens per row | {made} | {spent:.1f} | {tps:.1f} | "
                     f"{tps / rates['engine, transformers step']:.2f} | - | - | - | {min(cfg.batch_size, len(tasks))} "
                     f"| - | {2 * n_params * tps / (peak * 1e9):.2f} |")
        print(lines[-1], flush=True)
    best_plain = max(rates["plain HF generate, bfloat16"], rates["plain HF generate, float32"])
    lean = rates["engine, lean step (default)"]
    lines.append(f"\nlean step {lean:.1f} tok/s = {lean / rates['engine, transformers step']:.2f} x the engine with "
                 f"the transformers step, {lean / best_plain:.2f} x plain generate in its best dtype here; "
                 f"{2 * n_params * lean / (peak * 1e9):.2f} of the compute ceiling")
    return lines, rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", required=True, help="the demo's BC student (a trained model directory)")
    ap.add_argument("--n", type=int, default=12, help="demo workload: tasks per set")
    ap.add_argument("--synthetic-tasks", type=int, default=16, help="synthetic workload: tasks (= batch)")
    ap.add_argument("--only", choices=("demo", "synthetic"), help="run one workload")
    args = ap.parse_args()

    from score_distill.agent.rollout import RolloutConfig
    from score_distill.models.builtin import builtin_path
    from score_distill.models.local import available_cores
    from score_distill.precision import resolve_bf16
    from score_distill.tasks.load import generate_suite, load_tasks

    from decode_profile import matmul_peak  # this folder is on the path when run as a script

    torch.set_num_threads(available_cores())
    bf16 = resolve_bf16("auto", "cpu")
    dtype = "bfloat16" if bf16 else "float32"
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; weights {dtype}; "
          f"{dtype} matmul peak {peak:.0f} GFLOP/s")
    out: list[str] = []
    if args.only in (None, "demo"):
        demo_tasks = [t for suite in ("math", "search") for split in ("test", "ood")
                      for t in generate_suite(suite, split, args.n, 0, **(MATH if suite == "math" else {}))]
        demo_cfg = RolloutConfig(max_turns=8, max_new_tokens=160, batch_size=48, max_format_errors=2, max_repeats=1)
        out += workload("demo evaluation", args.student, demo_tasks, demo_cfg, peak, dtype)[0] + [""]
    if args.only in (None, "synthetic"):
        smol = str(builtin_path("smollm2-135m"))
        synth_cfg = RolloutConfig(batch_size=args.synthetic_tasks, max_turns=4, max_new_tokens=64)
        out += workload("synthetic", smol, load_tasks("math:test", args.synthetic_tasks, seed=0), synth_cfg, peak,
                        dtype)[0]
    print()
    print("\n".join(out))


if __name__ == "__main__":
    main()
