"""Difficulty calibration of the embedded suites: behaviour cloning of SmolLM2-135M on the
reference solutions of a whole train split, scored greedily on `test` and `ood`.

    .venv/bin/python bench/calibration.py --suite math --n-train 128 >> bench/calibration.txt

The suites are meant to leave room for a better method: BC on the train split should land
well below 100% on `test` (the target is 40-70% for SmolLM2-135M), and lower on `ood`.
Every piece is the project's own path: reference solutions executed in the sandbox, SFT by
`train.sft.train_sft`, evaluation by `evaluate.evaluate`. Work goes under `--out` and a
rerun resumes (the checkpoint and finished evaluations are reused).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def parse_dials(items: list[str]) -> dict:
    """`["max_ops=3", "distractors=[0,1]"]` -> {"max_ops": 3, "distractors": [0, 1]} (YAML values)."""
    import yaml

    return {k: yaml.safe_load(v) for k, v in (d.split("=", 1) for d in items)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="math", choices=["math", "search"])
    ap.add_argument("--n-train", type=int, default=128, help="train tasks (the whole train split of this run)")
    ap.add_argument("--n-eval", type=int, default=32, help="tasks of test and of ood")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--min-steps", type=int, default=0, help="at least this many optimizer steps (SFTOptions.min_steps)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits", nargs="+", default=["test", "ood"])
    ap.add_argument("--out", default="runs/calibration")
    ap.add_argument("--difficulty", nargs="*", default=[], metavar="DIAL=VALUE",
                    help="generator dials, e.g. max_ops=3 (math) or max_hops=3 (search)")
    ap.add_argument("--eval-difficulty", nargs="*", default=[], metavar="DIAL=VALUE",
                    help="dials of the evaluation sets only, over --difficulty (e.g. ood_max_ops=4): "
                         "the same trained student, scored on another test or ood")
    args = ap.parse_args()

    from score_distill.agent.rollout import RolloutConfig
    from score_distill.agent.steps import execute_steps
    from score_distill.evaluate import evaluate
    from score_distill.models.builtin import builtin_path
    from score_distill.models.load import load_model
    from score_distill.precision import resolve_bf16, weights_dtype
    from score_distill.tasks.load import generate_suite
    from score_distill.tools.config import ToolConfig
    from score_distill.train.sft import SFTOptions, train_sft

    def tag_of(d: dict) -> str:
        return "".join(f"-{k}{v}" for k, v in sorted(d.items())).replace(" ", "")

    dials, eval_only = parse_dials(args.difficulty), parse_dials(args.eval_difficulty)
    eval_dials = {**dials, **eval_only}
    tools = ToolConfig()
    tag = tag_of(dials)
    out = Path(args.out) / f"{args.suite}-{args.n_train}-e{args.epochs:g}-s{args.seed}{tag}"
    train = generate_suite(args.suite, "train", args.n_train, args.seed, **dials)
    examples = []
    for t in train:
        steps = execute_steps(t, t.reference or [], tools)
        if steps and steps[-1].final_answer is not None:
            examples.append((t.question, steps))
    resumed = (out / "sft" / "final" / "config.json").exists()
    t0 = time.perf_counter()
    opts = SFTOptions(epochs=args.epochs, lr=args.lr, batch_size=4, micro_batch_size=1, activation_checkpointing=True,
                      bf16="auto", seed=args.seed, logging_steps=10, min_steps=args.min_steps)
    final = train_sft(builtin_path("smollm2-135m"), examples, out / "sft", opts)
    sft_s = time.perf_counter() - t0
    model = load_model(str(final), dtype=weights_dtype("auto", "cpu"))
    rollout = RolloutConfig(max_turns=8, max_new_tokens=160, batch_size=32, max_format_errors=2, max_repeats=1)
    rows = []
    for split in args.splits:
        tasks = generate_suite(args.suite, split, args.n_eval, args.seed, **eval_dials)
        m = evaluate(model, tasks, out / f"eval-{split}{tag_of(eval_only)}", tools, rollout, desc=f"eval {split}")
        lo, hi = m["ci95"]
        rows.append(f"| {args.suite} | {len(examples)} | {args.epochs:g} | {split} | {m['n']} | "
                    f"{m['accuracy']:.1%} | [{lo:.1%}, {hi:.1%}] | {m['finish_rate']:.0%} |")
    evaluated = f", evaluated with {eval_only}" if eval_only else ""
    print(f"# BC calibration: SmolLM2-135M, {args.suite} train n={args.n_train} seed={args.seed}, "
          f"difficulty {dials or 'default'}{evaluated}, epochs {args.epochs:g}, lr {args.lr:g}, "
          f"{'bf16' if resolve_bf16('auto', 'cpu') else 'fp32'}; "
          + ("SFT checkpoint reused; " if resumed else f"SFT {sft_s:.0f} s; ")
          + "greedy eval, 8 turns x 160 tokens, the first repeated cell ends an episode")
    print("| suite | BC trajectories | epochs | split | n | accuracy | 95% CI | finished |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
