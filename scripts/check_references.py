"""Execute the reference solutions of many generated tasks in the sandbox; report per
suite and split how many reach their gold answer, mean steps (the plan included), and mean
tokens of the reference's assistant turns (SmolLM2 tokenizer; observations not counted).

    .venv/bin/python scripts/check_references.py --n 2000 --seed 0 > bench/reference_check.txt
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from score_distill.agent.format import render_step
from score_distill.tasks.load import SPLITS, generate_suite
from score_distill.tasks.references import execute_reference
from score_distill.tools.config import ToolConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000, help="tasks per suite and split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--suites", default="math,search")
    ap.add_argument("--tokenizer", default=None, help="HF tokenizer directory for token counts (default: smollm2-135m if converted)")
    args = ap.parse_args()
    count = _token_counter(args.tokenizer)
    tools = ToolConfig()
    print(f"# reference check: --n {args.n} --seed {args.seed}")
    print("| suite | split | tasks | reached gold | mean steps | mean tokens | seconds |")
    print("|---|---|---|---|---|---|---|")
    for suite in args.suites.split(","):
        for split in SPLITS:
            t0 = time.perf_counter()
            tasks = generate_suite(suite, split, args.n, args.seed)
            with ThreadPoolExecutor(4) as pool:
                runs = list(pool.map(lambda t: execute_reference(t, tools), tasks))
            ok = sum(r.correct and not r.errors for r in runs)
            steps = statistics.mean(len(t.reference or []) for t in tasks)
            toks = statistics.mean(count("\n".join(render_step(s) for s in t.reference or [])) for t in tasks)
            print(f"| {suite} | {split} | {len(tasks)} | {ok} | {steps:.2f} | {toks:.0f} | {time.perf_counter() - t0:.1f} |", flush=True)
            for r in runs:
                if not (r.correct and not r.errors):
                    print(f"  FAIL {r.task_id}: answer={r.final_answer!r} errors={r.errors[:2]}")


def _token_counter(tokenizer_dir: str | None):
    from transformers import AutoTokenizer

    if tokenizer_dir is None:
        from score_distill.models.builtin import builtin_path

        tokenizer_dir = str(builtin_path("smollm2-135m"))
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return lambda text: len(tok(text)["input_ids"])


if __name__ == "__main__":
    main()
