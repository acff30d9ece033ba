"""The RL update alone (scoring, backward, optimiser step) on one step's rollouts, five ways,
side by side in one run on the very same sequences: how the study and demo presets ran it
until now (one sequence per pass, activation checkpointing), one sequence per pass without
checkpointing, 4 sequences per pass padded to the longest, and with the tokens an item's
samples share (prompt and verified prefix) run once per item (`rl.share_prefix`), the rest of
each sample then one per pass or the item's 4 per pass padded.

    python bench/rl_update.py --run runs/study/seed0 > bench/rl_update.txt

Reads a finished run directory (a study seed's or the demo's): the RL items MPS exported, the
training tasks and the SCoRe-SFT student. It rolls out the items of the run's RL step `--step`
(the pool and order `score_rl` uses: `--items` of them) x `--group` samples once with the
run's RL settings (the reference teacher judges the key steps), renders them as
the trainer does, and then, for each arm, loads the student afresh, builds its optimiser and
times `grpo.update` over all the rendered sequences (a real step trains only the groups with
mixed rewards, 20-32 of 32 in the study's logs; here every sequence, so that the arms'
costs per sequence are compared on more of them). Arms alternate, `--repeats` times each,
and the table gives each arm's median.

Work counted (the same way for every arm; padding is not work): 6 x the transformer layers'
weights x the tokens the arm passes through the model, 6 x the LM head x the scored positions,
and causal attention (6 x layers x width x length^2 per sequence; with a shared prefix, the
prefix once and each row's rest against prefix + rest). Checkpointing recomputes the forward:
8 instead of 6. The fraction is of the bf16 (or fp32) matmul peak measured in the same run.
Each arm's update runs in a fresh process (spawned), which loads the student and builds its
optimiser. Memory: that process's resident high-water mark minus its resident size just
before the update (model, optimiser and inputs in memory): what the update adds, the larger of
the repeats. That includes the gradients and AdamW's two moments, which its first step
creates: 1.5 GiB in all for a 135M student in fp32, the same in every arm; the rest is the
passes' activations.

`--profile` runs the presets' arm once more under the torch profiler and adds where its time
goes: every op's own time (not its children's), summed by kind: the float32 log-softmax at the
targets and its backward (every op inside that function), the LM head and the embedding (any
other op on a vocabulary-sized tensor: the head's matmuls, its weight's cast, the embedding's
gradient), the layers' matmuls, attention, casts and copies, the optimiser, everything else;
and what is left of the wall time outside any op (Python, autograd bookkeeping). The
profiler's own cost makes that run slower than the timed ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path


def flops(cfg, layers: int, head: int, batches, checkpointing: bool) -> tuple[float, int]:  # noqa: ANN001
    """Work of one pass over `batches` (batches.Batch), as the module docstring counts it, and the
    tokens that go through the model (padding included); a prefix that consecutive batches
    share runs once (`grpo.update`), so it counts once."""
    from score_distill.train.batches import same_prefix

    width = cfg.num_attention_heads * cfg.head_dim
    mult = 8 if checkpointing else 6
    total, through, last = 0.0, 0, None
    for b in batches:
        new = b.prefix is not None and not same_prefix(last, b.prefix)
        prefix = 0 if b.prefix is None else b.prefix.shape[1]
        rows = b.attention_mask.sum(-1).tolist()
        tokens = (prefix if new else 0) + sum(rows)
        attention = (prefix**2 if new else 0) + sum((prefix + n) ** 2 - prefix**2 for n in rows)
        total += mult * (layers * tokens + cfg.num_hidden_layers * width * attention) + 6 * head * b.keep * len(rows)
        through += (prefix if new else 0) + int(b.input_ids.numel())
        last = b.prefix
    return total, through


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


KINDS = (  # (kind, op-name fragments); the first match counts
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("matmul, layers", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("optimiser (AdamW, gradient clip)", ("_foreach", "aten::_fused_adamw", "clip_grad")),
    ("casts and copies", ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::cat", "aten::contiguous",
                          "aten::expand", "aten::index", "aten::slice")),
)
LOGPROBS = "float32 log-softmax at the targets, forward and backward"
PRESETS = "prefix shared, then 1 a pass (`rl.share_prefix`, the presets now)"
VOCAB = "LM head and embedding (every op on a vocabulary-sized tensor)"


def by_kind(prof, vocab: int) -> tuple[dict[str, float], list[tuple[str, float]]]:  # noqa: ANN001
    """Each op's own time (so nothing counts twice), summed by kind: every op run inside the
    log-prob function (marked LOGPROBS) as LOGPROBS, any other with the vocabulary in its
    shapes as VOCAB, the rest by name; and the 20 ops with the most own time."""
    kinds: dict[str, float] = {}
    top: dict[str, float] = {}
    for e in prof.events():
        own = e.self_cpu_time_total / 1e6
        parent, inside = e, False
        while parent is not None and not inside:
            inside, parent = parent.name == LOGPROBS, parent.cpu_parent
        if inside:
            kind = LOGPROBS
        elif any(vocab in (shape or []) for shape in e.input_shapes or []):
            kind = VOCAB
        else:
            kind = next((k for k, frags in KINDS if any(f in e.name for f in frags)), "everything else")
        kinds[kind] = kinds.get(kind, 0.0) + own
        top[e.name] = top.get(e.name, 0.0) + own
    return kinds, sorted(top.items(), key=lambda kv: -kv[1])[:20]


def one_update(start: str, opts, pairs, advantages, logps, pad_id: int, size: int, checkpointing: bool,  # noqa: ANN001
               groups, profile_vocab: int | None = None) -> dict:  # noqa: ANN001
    """Load the student, build its optimiser and time one `grpo.update` over the sequences;
    run in a fresh process, so that its resident memory is this arm's alone. With
    `profile_vocab` (the vocabulary size) the update runs under the torch profiler, the
    log-prob function (`logprobs._TargetLogprobs`) marked, and its time comes back by kind."""
    import contextlib

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    from transformers import AutoModelForCausalLM

    from score_distill.train import logprobs
    from score_distill.train.batches import micro_batches
    from score_distill.train.grpo import Scored, update
    from score_distill.train.rl_models import build_optimizer

    if profile_vocab is not None:
        def marked(fn):  # noqa: ANN001, ANN202
            def run(*args):  # noqa: ANN002, ANN202
                with record_function(LOGPROBS):
                    return fn(*args)
            return staticmethod(run)

        fn = logprobs._TargetLogprobs  # marked for good: each call runs in a process of its own
        fn.forward, fn.backward = marked(fn.forward), marked(fn.backward)
    model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = build_optimizer(model, opts)
    mbs = micro_batches(pairs, advantages, size, pad_id, logps, groups)
    scored = [Scored(b, a) for b, a in mbs]
    layers = sum(p.numel() for p in model.get_decoder().layers.parameters())
    work, through = flops(model.config, layers, model.get_output_embeddings().weight.numel(), [b for b, _ in mbs],
                          checkpointing)
    before = vm_kib("VmRSS")
    profiler = (profile(activities=[ProfilerActivity.CPU], record_shapes=True) if profile_vocab is not None
                else contextlib.nullcontext())
    with profiler as prof:
        t0 = time.perf_counter()
        stats = update(model, optimizer, lambda loss: loss.backward(),
                       lambda n: torch.nn.utils.clip_grad_norm_(model.parameters(), n), scored,
                       clip_eps=opts.clip_eps, kl_coef=0.0, ppo_epochs=1, max_grad_norm=opts.max_grad_norm,
                       temperature=opts.rollout.temperature, bf16=opts.bf16, is_cap=opts.is_cap)
        wall = time.perf_counter() - t0
    out = {"s": wall, "loss": stats.loss, "grad_norm": stats.grad_norm, "work": work, "through": through,
           "passes": len(mbs), "memory": (vm_kib("VmHWM") - before) / 2**20, "threads": torch.get_num_threads()}
    if profile_vocab is not None:
        out["kinds"], out["top"] = by_kind(prof, profile_vocab)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished run directory (study seed or demo)")
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--step", type=int, default=0, help="the items of this RL step of the run (0: its first)")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each arm (0: none, with --profile)")
    ap.add_argument("--fp32", action="store_true", help="score in fp32 (the arms' losses and gradient norms then "
                                                        "agree to float rounding; in bf16 each pass rounds its own way)")
    ap.add_argument("--profile", action="store_true", help="also profile the presets' arm once (where its time goes)")
    args = ap.parse_args()

    import torch
    sys.path.insert(0, str(Path(__file__).parent))
    from decode_profile import matmul_peak

    from score_distill.config import load_yaml
    from score_distill.teachers.load import load_teacher
    from score_distill.tools.config import ToolConfig
    from score_distill.train.rewards import KeyStepJudge
    from score_distill.train.rl import RLOptions
    from score_distill.train.rl_rollouts import collect, item_groups, render_samples
    from score_distill.train.rl_items import items_for_step, select_pool
    from score_distill.train.rl_models import build_sampler
    from score_distill.types import KeyStepItem, Task, read_jsonl

    run = Path(args.run)
    tasks = {t.id: t for f in sorted((run / "tasks").glob("*-train.jsonl")) for t in read_jsonl(f, Task)}
    opts = load_yaml(RLOptions, run / "score_rl" / "rl_config.yaml")
    opts = dataclasses.replace(opts, group_size=args.group, **({"bf16": False} if args.fp32 else {}))
    pool = select_pool(read_jsonl(run / "mps" / "export" / "rl_items.jsonl", KeyStepItem), opts.outcome_only_share,
                       opts.rollout.seed)
    items = [pool[i] for i in items_for_step(len(pool), args.step, args.items, opts.rollout.seed)]
    start = run / "score_sft" / "final"
    sampler, _ = build_sampler("local", start, torch.device("cpu"), opts)
    t0 = time.perf_counter()
    samples = collect(sampler, items, tasks, ToolConfig(), KeyStepJudge(load_teacher("reference")), opts, 0)
    rollout_s = time.perf_counter() - t0
    seqs = render_samples(sampler.tokenizer, samples, opts.max_length)
    pad_id = sampler.tokenizer.pad_token_id if sampler.tokenizer.pad_token_id is not None else sampler.tokenizer.eos_token_id
    del sampler
    trained = [i for i, r in enumerate(seqs) if 1 in r.mask]
    # A nonzero advantage for every sequence, so each pass has a gradient to carry.
    advantages = [samples[i].advantage or (0.5 if k % 2 else -0.5) for k, i in enumerate(trained)]
    pairs = [(seqs[i].ids, seqs[i].mask) for i in trained]
    logps = [seqs[i].sampler_logprobs for i in trained]
    lengths = [len(p[0]) for p in pairs]
    generated = sum(sum(p[1]) for p in pairs)
    by_item = item_groups(trained, args.group)  # as the trainer groups them
    arms = {
        "1 a pass, checkpointing (the presets until now)": (1, True, None),
        "1 a pass": (1, False, None),
        "4 a pass, padded": (4, False, None),
        PRESETS: (1, False, by_item),
        "prefix shared, then an item's 4 a pass, padded": (args.group, False, by_item),
    }
    dtype = torch.bfloat16 if opts.bf16 else torch.float32
    peak = matmul_peak(dtype)
    print(f"# the update on {len(trained)} sequences of {len(items)} items x {args.group} samples from {start} "
          f"(rolled out once, {rollout_s:.0f} s): {sum(lengths)} tokens, {generated} of them trained; "
          f"lengths {min(lengths)}-{max(lengths)}; bf16 autocast {opts.bf16}, {dtype} matmul peak {peak:.0f} "
          f"GFLOP/s; torch threads {torch.get_num_threads()}; median of {args.repeats} alternating runs per arm")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if args.repeats:  # 0: the profile alone
        results: dict[str, list[dict]] = {a: [] for a in arms}
        for _ in range(args.repeats):
            for arm, (size, checkpointing, arm_groups) in arms.items():
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                    r = pool.submit(one_update, str(start), opts, pairs, advantages, logps, pad_id, size, checkpointing,
                                    arm_groups).result()
                results[arm].append(r)
                print(f"# {arm}: {r['s']:.1f} s, loss {r['loss']:.4f}, grad norm {r['grad_norm']:.4f}, "
                      f"{r['memory']:.2f} GiB, torch threads {r['threads']}", flush=True)
        base = statistics.median(r["s"] for r in results[next(iter(arms))])
        print("| arm | passes | tokens through the model (padding included) | s | achieved GFLOP/s | fraction of peak "
              "| speed-up over the presets' until now | resident memory the update adds, GiB |")
        print("|---|---|---|---|---|---|---|---|")
        for arm, runs in results.items():
            t = statistics.median(r["s"] for r in runs)
            r = runs[0]
            print(f"| {arm} | {r['passes']} | {r['through']} | {t:.1f} | {r['work'] / t / 1e9:.0f} | "
                  f"{r['work'] / t / 1e9 / peak:.2f} | {base / t:.2f} | {max(x['memory'] for x in runs):.2f} |")
    if args.profile:
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(start).vocab_size
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            size, checkpointing, arm_groups = arms[PRESETS]
            p = pool.submit(one_update, str(start), opts, pairs, advantages, logps, pad_id, size, checkpointing,
                            arm_groups, vocab).result()
        inside = sum(p["kinds"].values())
        print(f"\n# where the presets' arm spends its time: one more update under the profiler, {p['s']:.1f} s "
              "(the profiler's own cost included); each op's own time, by kind")
        print("| kind | s | share of the wall time |")
        print("|---|---|---|")
        for kind, sec in sorted(p["kinds"].items(), key=lambda kv: -kv[1]):
            print(f"| {kind} | {sec:.1f} | {sec / p['s']:.2f} |")
        print(f"| outside any op (Python, autograd) | {p['s'] - inside:.1f} | {(p['s'] - inside) / p['s']:.2f} |")
        print("\n# the ops with the most own time")
        print("| op | s |")
        print("|---|---|")
        for name, sec in p["top"]:
            print(f"| {name} | {sec:.1f} |")


if __name__ == "__main__":
    main()
