"""Agent-loop generation speed, every candidate side by side in one run, with the machine's
two limits: its matmul peak (compute) and its memory read rate (bandwidth).

    python bench/decode_speed.py --student runs/demo/bc/sft/final > bench/decode_speed.txt

Two workloads, each run once per candidate in the same process:
- `demo`: the demo's evaluation (12 tasks per set: math and search, test and ood, with the
  demo's difficulty dials; greedy; 8 turns x 160 tokens; batch 48) with `--student`;
- `synthetic`: the workload of `rollout_throughput.py` (16 math:test tasks, 4 turns x 64
  tokens, batch 16) with the built-in SmolLM2-135M.

Candidates: our engine as it was (weights in their ordinary row-major layout, every row's
prompt prefilled in full), with column-major weights while decoding
(`LocalConfig.column_major`) but no shared prefixes, as it runs by default (column-major, and
rows admitted together prefill what they share once), and the default with int8 dynamically
quantised linear layers (`torch.ao` per-channel weights; a measured candidate, not a setting:
it changes the model, see "same episodes"). Then plain Hugging Face `generate` on the same first prompts at
the same batch, greedy, asked for as many new tokens per row as the agent loop generated per
trajectory on average, with both weight layouts.

Columns: tok/s = generated tokens / wall time (tools and bookkeeping included); "same
episodes" = trajectories step-for-step identical to the row-major engine's; "prefilled" =
prompt row-tokens fed to the model, padding included; "rows" and
"width" = the mean rows and the mean KV columns of a decoding forward pass; "compute" = 2 x
parameters x tok/s / matmul peak (the fraction of the arithmetic the machine could do);
"bandwidth" = bytes a decoding pass must read (every weight once, plus the keys and values
of every row over the batch's width) x passes / wall time / measured read rate.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

MATH = {"max_ops": 3, "distractors": [0, 1], "ood_min_ops": 4, "ood_max_ops": 5}  # configs/demo.yaml


def read_rate(gib: float = 1.0) -> float:
    """GB/s of a sum over a buffer far larger than the caches."""
    x = torch.ones(int(gib * (1 << 30)) // 4)
    x.sum()
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        x.sum()
        best = max(best, x.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its deprecation
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                inplace=True)


def run_engine(path: str, tasks: list, cfg, mode: str) -> dict:
    from score_distill.agent.rollout import Episode, rollout
    from score_distill.models.local import LocalConfig, LocalModel
    from score_distill.tools.config import ToolConfig

    engine = LocalModel(path, LocalConfig(column_major=mode != "row-major"))
    if mode in ("row-major", "column-major, no shared prefixes"):
        engine.share_prefixes = lambda rows: None
    params = sum(p.numel() for p in engine.model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    if mode == "int8":
        engine.decoding_layout()
        engine.model = quantize_int8(engine.model)
        weight_bytes = weight_bytes // 4  # the linear layers hold nearly all of it
    passes: list[tuple[int, int]] = []
    forward = engine.forward

    prefilled = [0]

    def counted(batch, ids):
        if ids.shape[1] == 1:
            passes.append((ids.shape[0], batch.end - batch.start))
        else:
            prefilled[0] += ids.numel()
        return forward(batch, ids)

    engine.forward = counted
    rollout(engine, [Episode(tasks[0])], ToolConfig(), type(cfg)(max_turns=2, max_new_tokens=8))  # warm-up
    passes.clear()
    prefilled[0] = 0
    t0 = time.perf_counter()
    trajs = rollout(engine, [Episode(t) for t in tasks], ToolConfig(), cfg)
    wall = time.perf_counter() - t0
    tokens = sum(t.generated_tokens for t in trajs)
    read = sum(weight_bytes + rows * width * engine.kv_bytes_per_token for rows, width in passes)
    return {"tokens": tokens, "wall": wall, "trajs": trajs, "passes": passes, "read": read, "params": params,
            "prefilled": prefilled[0]}


def plain_generate(path: str, prompts: list, batch: int, new_tokens: int, column_major: bool) -> tuple[int, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    from score_distill.models.local import set_weight_layout

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if column_major:
        set_weight_layout(model, column_major=True)
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


def workload(name: str, path: str, tasks: list, cfg, peak: float, rate: float) -> list[str]:
    from score_distill.agent.format import to_messages

    lines = [f"## {name}: {len(tasks)} tasks, batch {cfg.batch_size}, {cfg.max_turns} turns x {cfg.max_new_tokens} "
             f"tokens, greedy; model {path}",
             "| candidate | tokens | wall s | tok/s | vs row-major | same episodes | prefilled | rows | width | compute | "
             "bandwidth |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = None
    results = {}
    for mode in ("row-major", "column-major, no shared prefixes", "default", "int8"):
        r = run_engine(path, tasks, cfg, mode)
        results[mode] = r
        n_params = r["params"]
        tps = r["tokens"] / r["wall"]
        base = base or r
        same = sum(a.steps == b.steps for a, b in zip(base["trajs"], r["trajs"]))
        rows = sum(p[0] for p in r["passes"]) / max(1, len(r["passes"]))
        width = sum(p[1] for p in r["passes"]) / max(1, len(r["passes"]))
        lines.append(f"| engine, {mode} | {r['tokens']} | {r['wall']:.1f} | {tps:.1f} | "
                     f"{tps / (base['tokens'] / base['wall']):.2f} | {same}/{len(tasks)} | {r['prefilled']} | {rows:.1f} | "
                     f"{width:.0f} | "
                     f"{2 * n_params * tps / (peak * 1e9):.2f} | {r['read'] / r['wall'] / (rate * 1e9):.2f} |")
        print(lines[-1], flush=True)
    per_row = max(1, round(base["tokens"] / len(tasks)))
    prompts = [to_messages(t.question, []) for t in tasks]
    plain = {}
    for column_major in (False, True):
        made, spent = plain_generate(path, prompts, cfg.batch_size, per_row, column_major)
        tps = plain[column_major] = made / spent
        lines.append(f"| plain HF generate, fp32, {'column' if column_major else 'row'}-major, {per_row} new tokens "
                     f"per row | {made} | {spent:.1f} | {tps:.1f} | {tps / (base['tokens'] / base['wall']):.2f} | - | - | "
                     f"{min(cfg.batch_size, len(tasks))} | - | {2 * n_params * tps / (peak * 1e9):.2f} | - |")
        print(lines[-1], flush=True)
    default = results["default"]
    tps = default["tokens"] / default["wall"]
    lines.append(f"\ndefault engine {tps:.1f} tok/s = {tps / plain[False]:.2f} x plain generate as shipped (row-major), "
                 f"{tps / plain[True]:.2f} x plain generate with column-major weights")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", required=True, help="the demo's BC student (a trained model directory)")
    ap.add_argument("--n", type=int, default=12, help="demo workload: tasks per set")
    ap.add_argument("--synthetic-tasks", type=int, default=16, help="synthetic workload: tasks (= batch)")
    args = ap.parse_args()

    from score_distill.agent.rollout import RolloutConfig
    from score_distill.models.builtin import builtin_path
    from score_distill.models.local import available_cores
    from score_distill.tasks.load import generate_suite, load_tasks

    from decode_profile import matmul_peak  # this folder is on the path when run as a script

    torch.set_num_threads(available_cores())
    peak, rate = matmul_peak(torch.float32), read_rate()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul peak {peak:.0f} GFLOP/s; "
          f"memory read {rate:.1f} GB/s")
    demo_tasks = [t for suite in ("math", "search") for split in ("test", "ood")
                  for t in generate_suite(suite, split, args.n, 0, **(MATH if suite == "math" else {}))]
    demo_cfg = RolloutConfig(max_turns=8, max_new_tokens=160, batch_size=48, max_format_errors=2, max_repeats=1)
    smol = str(builtin_path("smollm2-135m"))
    synth_cfg = RolloutConfig(batch_size=args.synthetic_tasks, max_turns=4, max_new_tokens=64)
    out = workload("demo evaluation", args.student, demo_tasks, demo_cfg, peak, rate)
    out += [""] + workload("synthetic", smol, load_tasks("math:test", args.synthetic_tasks, seed=0), synth_cfg, peak, rate)
    print()
    print("\n".join(out))


if __name__ == "__main__":
    main()
