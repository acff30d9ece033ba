"""Continuous batching against lockstep turns, side by side in one run, on the demo's
evaluation workload: the same student, the same 48 tasks (12 per set: math and search, test
and ood), greedy, 8 turns of at most 160 tokens, up to 48 episodes at once.

1. lockstep: one `generate` call per turn for every live episode; the call lasts as long as
   its longest row, while the rows that finished early wait (what the rollout did before);
2. continuous: an episode's next turn joins the running batch as soon as its tool call
   returns (`LocalModel.open_stream`).

Both runs use one engine (bf16 weights) and the same seeds; greedy decoding makes their
trajectories equal up to floating-point reordering in differently shaped batches.

    .venv/bin/python bench/rollout_continuous.py --student runs/demo/bc/sft/final > bench/rollout_continuous.txt
"""

from __future__ import annotations

import argparse
import time

from score_distill.evaluate import score_trajectory
from score_distill.agent.rollout import Episode, RolloutConfig, rollout
from score_distill.agent.format import to_messages
from score_distill.models.base import BatchedStream, Generation, GenRequest, SamplingParams
from score_distill.models.local import LocalConfig, LocalModel
from score_distill.tasks.load import generate_suite
from score_distill.tools.config import ToolConfig

MATH = {"max_ops": 3, "distractors": [0, 1], "ood_min_ops": 4, "ood_max_ops": 5}  # configs/demo.yaml


class Lockstep:
    """The engine behind a stream that serves one batch per call, as the rollout used to."""

    def __init__(self, engine: LocalModel) -> None:
        self.engine, self.name = engine, engine.name

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[Generation]:
        return self.engine.generate(requests, params)

    def release(self, cache_key: str) -> None:
        self.engine.release(cache_key)

    def open_stream(self, params: SamplingParams, max_rows: int) -> BatchedStream:
        return BatchedStream(self, params, max_rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", required=True, help="a trained student directory (the demo's BC student)")
    ap.add_argument("--n", type=int, default=12, help="tasks per set")
    args = ap.parse_args()
    tasks = [t for suite in ("math", "search") for split in ("test", "ood")
             for t in generate_suite(suite, split, args.n, 0, **(MATH if suite == "math" else {}))]
    cfg = RolloutConfig(max_turns=8, max_new_tokens=160, batch_size=48, max_format_errors=2)
    engine = LocalModel(args.student, LocalConfig(dtype="bfloat16"))
    engine.generate([GenRequest(to_messages(tasks[0].question, []))], SamplingParams(max_new_tokens=8))  # warm-up
    print(f"student {args.student}, {len(tasks)} tasks, batch {cfg.batch_size}, "
          f"{cfg.max_turns} turns x {cfg.max_new_tokens} tokens, greedy")
    runs = {}
    for mode, model in (("lockstep", Lockstep(engine)), ("continuous", engine)):
        t0 = time.perf_counter()
        trajs = rollout(model, [Episode(t) for t in tasks], ToolConfig(), cfg)
        wall = time.perf_counter() - t0
        tokens = sum(t.generated_tokens for t in trajs)
        correct = sum(score_trajectory(task, t).correct for task, t in zip(tasks, trajs))
        runs[mode] = (wall, trajs)
        print(f"{mode:10s} wall {wall:6.1f} s | generated {tokens} tokens | {tokens / wall:5.1f} tok/s | "
              f"turns {sum(len(t.steps) for t in trajs)} | correct {correct}/{len(tasks)}")
    same = sum([s.raw or s.thought + s.code for s in a.steps] == [s.raw or s.thought + s.code for s in b.steps]
               for a, b in zip(runs["lockstep"][1], runs["continuous"][1]))
    print(f"speed-up continuous / lockstep: {runs['lockstep'][0] / runs['continuous'][0]:.2f}x; "
          f"identical trajectories: {same}/{len(tasks)}")


if __name__ == "__main__":
    main()
