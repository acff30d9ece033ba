"""SFT training throughput on SmolLM2-135M: tokens/s and the fraction of the machine's
matmul peak, both measured in the same run.

    .venv/bin/python bench/sft_throughput.py > bench/sft_throughput.txt

Three layouts of the same data, side by side, at the precision `bf16: auto` resolves to on
this machine (bf16 autocast where the CPU multiplies bf16 natively, fp32 elsewhere):
padded micro-batches of 4 (each padded to its longest), one sequence per forward pass, and
packed rows of up to 2,048 tokens (`sft.packing`: one row per forward pass, each sequence
attending causally to itself alone, without a (T, T) mask: `train.packed_attention`). The
packed run takes one row per optimiser step, about the 4 sequences per step of the others
(the mean sequence is ~450 tokens). Every layout cuts sequences at 2,048 tokens.

Peak: the best of a few large square matmuls in the dtype the training computes in, on all
threads. Useful FLOPs, counted the same for every layout (padding is not useful work): 6 x
the transformer layers' weights x tokens, 6 x the LM head x trained positions (the CPU path
scores only those: `sft._trainer_class`), and per-sequence causal attention (6 x layers x
width x length^2 for forward and backward); embedding look-ups and norms are left out. Wall
time covers the whole of `train.sft.train_sft` (TRL's SFTTrainer, one epoch) on reference
trajectories rendered by `train.render`: model load, optimiser steps, the final save. Not
measured: memory (bench/sft_memory.py), GPUs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

ROW = 2048  # tokens of a packed row, and the length every layout cuts a sequence to


def useful_flops(model, ds) -> float:  # noqa: ANN001 (a transformers model, a datasets.Dataset)
    """Training FLOPs of one epoch over `ds`, counted as the module docstring says."""
    cfg = model.config
    head = model.get_output_embeddings().weight.numel()
    layers = sum(p.numel() for p in model.get_decoder().layers.parameters())
    lengths = [len(x) for x in ds["input_ids"]]
    trained = sum(sum(t != -100 for t in row[1:]) for row in ds["labels"])
    width = cfg.num_attention_heads * cfg.head_dim
    return 6 * (layers * sum(lengths) + head * trained + cfg.num_hidden_layers * width * sum(n * n for n in lengths))


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

    from decode_profile import matmul_peak  # this folder is on the path when run as a script

    model_dir = builtin_path("smollm2-135m")
    tasks = generate_suite(args.suite, "train", args.n, seed=0)
    examples = [(t.question, execute_steps(t, t.reference or [], ToolConfig())) for t in tasks]
    tok = AutoTokenizer.from_pretrained(model_dir)
    ds = build_dataset(tok, examples, max_length=ROW)  # as every layout below cuts them: the same tokens
    tokens = sum(len(x) for x in ds["input_ids"])
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    params, flops = sum(p.numel() for p in model.parameters()), useful_flops(model, ds)
    del model
    print(f"# SFT throughput, SmolLM2-135M ({params / 1e6:.1f}M params), {len(ds)} {args.suite} reference "
          f"trajectories, {tokens} tokens (mean {statistics.mean(len(x) for x in ds['input_ids']):.0f}), "
          f"torch threads {torch.get_num_threads()}")
    bf16 = resolve_bf16("auto", "cpu")
    dtype = torch.bfloat16 if bf16 else torch.float32
    peak = matmul_peak(dtype)
    print(f"# precision: {'bf16 autocast' if bf16 else 'fp32'} (`bf16: auto` on this CPU); {dtype} matmul peak "
          f"{peak:.0f} GFLOP/s; useful work {flops / 1e12:.2f} TFLOP per epoch")
    print("| layout | seconds | tokens/s | achieved GFLOP/s | fraction of peak |")
    print("|---|---|---|---|---|")
    layouts = (("padded: 4 sequences per forward pass", dict(micro_batch_size=4, batch_size=4)),
               ("one sequence per forward pass", dict(micro_batch_size=1, batch_size=4)),
               (f"packed: one row of up to {ROW:,} tokens per forward pass", dict(micro_batch_size=1, batch_size=1,
                                                                                 packing=True)))
    for name, layout in layouts:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            opts = SFTOptions(epochs=1, bf16=bf16, max_length=ROW, logging_steps=1000, **layout)
            train_sft(model_dir, examples, out, opts)
            dt = time.perf_counter() - t0
        achieved = flops / dt / 1e9
        print(f"| {name} | {dt:.1f} | {tokens / dt:.0f} | {achieved:.1f} | {achieved / peak:.2f} |", flush=True)

if __name__ == "__main__":
    main()
