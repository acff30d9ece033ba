"""`score-distill benchmarks`: the paper's benchmarks, how each is scored, the formats read.

    score-distill benchmarks
    score-distill eval --benchmark aime24 --data aime24.jsonl --model runs/demo/score_rl/final --out runs/eval-aime24
    score-distill eval --benchmark gaia --data gaia.jsonl --judge openai:gpt-4o-mini@https://api.openai.com/v1 ...
"""

from __future__ import annotations

import argparse

HELP = "list the paper's benchmarks, their scorers and the data formats `eval --benchmark` reads"

SCORER_NAMES = {"math": "exact math equivalence", "f1": "token F1 (value) and exact match (correct)",
                "llm": "LLM judge (--judge openai:<model>@<base-url>)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    from score_distill.tasks.benchmarks import FORMATS
    from score_distill.tasks.scoring import BENCHMARKS

    print(f"{'name':16} {'group':8} {'title':22} scorer")
    for b in BENCHMARKS.values():
        print(f"{b.name:16} {b.group:8} {b.title:22} {SCORER_NAMES[b.scorer]}")
    print("\nformats of --data (a JSON document is agent-distillation's; JSONL is detected from its first record): "
          + "; ".join(f"{name}: {', '.join(f for f in fields if f)}" for name, fields in FORMATS.items()))
    return 0
