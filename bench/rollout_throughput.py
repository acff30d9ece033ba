"""Agent rollout throughput against plain batched generation, side by side in one run.

For each model, the same batch of tasks is run twice:
1. the agent loop (`agent.rollout`): multi-turn CodeAct episodes, greedy, with sandbox
   execution between turns, per-trajectory KV caches kept across turns, finished episodes
   leaving the batch; throughput = generated tokens / wall time of the whole rollout
   (model, tools, parsing and bookkeeping included);
2. plain batched generation: Hugging Face `model.generate` on the same first prompts, same
   batch size, greedy, asked for exactly as many new tokens per row as the agent loop
   generated per trajectory on average (`min_new_tokens = max_new_tokens`), so both produce
   the same number of tokens.

    .venv/bin/python bench/rollout_throughput.py > bench/rollout_throughput.txt
"""

from __future__ import annotations

import argparse
import time

import torch


def plain_generate(model_dir: str, prompts: list[list[dict[str, str]]], new_tokens: int) -> tuple[int, float]:
    """(tokens generated, seconds) of one left-padded `model.generate` call."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        dt = time.perf_counter() - t0
    return int((out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]), dt


def bench(name: str, tasks_spec: str, batch: int, max_turns: int, max_new_tokens: int) -> str:
    from score_distill.agent.format import to_messages
    from score_distill.agent.rollout import Episode, RolloutConfig, rollout
    from score_distill.models.builtin import builtin_path
    from score_distill.models.load import load_model
    from score_distill.tasks.load import load_tasks
    from score_distill.tools.config import ToolConfig

    tasks = load_tasks(tasks_spec, batch, seed=0)
    model = load_model(name)
    cfg = RolloutConfig(batch_size=batch, max_turns=max_turns, max_new_tokens=max_new_tokens)
    rollout(model, [Episode(tasks[0])], ToolConfig(), RolloutConfig(max_turns=2, max_new_tokens=8))  # warm-up
    t0 = time.perf_counter()
    trajs = rollout(model, [Episode(t) for t in tasks], ToolConfig(), cfg)
    agent_s = time.perf_counter() - t0
    gen = sum(t.generated_tokens for t in trajs)
    model_s = sum(t.model_time_s for t in trajs)
    tool_s = sum(t.tool_time_s for t in trajs)
    turns = sum(t.n_turns for t in trajs) / len(trajs)
    cached = sum(t.prompt_tokens for t in trajs)
    del model
    per_row = max(1, round(gen / len(trajs)))
    plain_tokens, plain_s = plain_generate(str(builtin_path(name)), [to_messages(t.question, []) for t in tasks], per_row)
    agent_tps, plain_tps = gen / agent_s, plain_tokens / plain_s
    return (f"| {name} | {tasks_spec} | {batch} | {turns:.1f} | {gen} | {agent_s:.1f} | {model_s / len(trajs):.1f} | "
            f"{tool_s:.1f} | {cached} | {agent_tps:.0f} | {plain_tokens} | {plain_s:.1f} | {plain_tps:.0f} | "
            f"{agent_tps / plain_tps:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="tiny,smollm2-135m")
    ap.add_argument("--tasks", default="math:test")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    print(f"# rollout throughput: --tasks {args.tasks} --batch {args.batch} --max-turns {args.max_turns} "
          f"--max-new-tokens {args.max_new_tokens}; torch threads {torch.get_num_threads()}")
    print("| model | tasks | batch | mean turns | agent gen tokens | agent wall s | model s per traj (summed shares) | "
          "tool s (summed) | prompt tokens prefilled | agent tok/s | plain tokens | plain s | plain tok/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        print(bench(name, args.tasks, args.batch, args.max_turns, args.max_new_tokens), flush=True)


if __name__ == "__main__":
    main()
