"""One RL step (8 items x 4 samples) three ways, side by side in one run, split into
rollout and the rest (scoring and update): with the engine's transformers decoding step and
the update the presets ran until the shared prefixes (one sequence per pass, activations
recomputed), with the lean decoding step (the default) and that update, and with the lean step
and the update the presets run now (`share_prefix`: the tokens an item's samples share run
once, then one sequence per pass, no recomputation). `bench/rl_update.py` compares updates alone,
on identical sequences.

    python bench/rl_step.py --run runs/demo > bench/rl_step.txt

Reads a finished run directory (the demo's, or a study seed's): the RL items MPS exported
(`mps/export/rl_items.jsonl`), the training tasks (`tasks/*-train.jsonl`) and the SCoRe-SFT
student (`score_sft/final`), and trains one step from that student with the run's RL settings
(`score_rl/rl_config.yaml`) except `items_per_step: 8` and `group_size: 4`, judged by the
reference teacher. Each arm trains into its own fresh directory from the same start, with the
same seed, so all see the same items and draw the same seeds; the rollouts still differ a
little between arms (which rows share a decoding step depends on when each sandbox call
returns, and a row's logits depend in their last bits on its batch), so an arm's update
trains on its own rollouts. The step of the code before the lean step is measured by running
this script's earlier version at that commit (see the output's notes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished demo run directory")
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    args = ap.parse_args()

    import torch

    from score_distill.config import load_yaml
    from score_distill.models import local
    from score_distill.teachers.load import load_teacher
    from score_distill.tools.config import ToolConfig
    from score_distill.train.rl import RLOptions, train_rl
    from score_distill.types import KeyStepItem, Task, read_jsonl

    run = Path(args.run)
    items = read_jsonl(run / "mps" / "export" / "rl_items.jsonl", KeyStepItem)
    tasks = {t.id: t for f in sorted((run / "tasks").glob("*-train.jsonl")) for t in read_jsonl(f, Task)}
    opts = load_yaml(RLOptions, run / "score_rl" / "rl_config.yaml")
    opts = dataclasses.replace(opts, steps=1, items_per_step=args.items, group_size=args.group, save_every=0)
    start = run / "score_sft" / "final"
    print(f"# one RL step from {start}: {len(items)} items exported, items_per_step {opts.items_per_step}, "
          f"group_size {opts.group_size}, bf16 {opts.bf16} (the update's settings are each arm's); torch threads "
          f"{torch.get_num_threads()}")
    print("| engine | step s | rollout s | rest s | generated tokens | rollout tok/s | reward | mixed groups "
          "| sequences trained | rest s per sequence trained |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    @dataclasses.dataclass
    class TransformersStep(local.LocalConfig):
        lean_decode: bool = False

    plain = local.LocalConfig
    before = dict(micro_batch_size=1, activation_checkpointing=True, share_prefix=False)
    now = dict(micro_batch_size=1, activation_checkpointing=False, share_prefix=True)
    arms = (("transformers decoding step, update 1 a pass with checkpointing", TransformersStep, before),
            ("lean step, update 1 a pass with checkpointing", plain, before),
            ("lean step, update on shared prefixes (the presets now)", plain, now))
    rows = {}
    for arm, config, changes in arms:
        local.LocalConfig = config  # train_rl imports it when it builds its engine
        try:
            with tempfile.TemporaryDirectory() as out:
                train_rl(start, items, tasks, load_teacher("reference"), ToolConfig(), Path(out) / "rl",
                         dataclasses.replace(opts, **changes))
                [rec] = [json.loads(line) for line in (Path(out) / "rl" / "rl_log.jsonl").read_text().splitlines()]
        finally:
            local.LocalConfig = plain
        rows[arm] = rec
        print(f"| {arm} | {rec['time_s']:.1f} | {rec['rollout_s']:.1f} | {rec['time_s'] - rec['rollout_s']:.1f} | "
              f"{rec['gen_tokens']} | {rec['gen_tok_s']:.1f} | {rec['reward']:.3f} | {rec['signal']:.2f} | "
              f"{rec['trained_seqs']} | {(rec['time_s'] - rec['rollout_s']) / max(rec['trained_seqs'], 1):.2f} |",
              flush=True)
    a, b, c = rows.values()
    print(f"\nstep time, transformers step / lean step, the same update: {a['time_s'] / b['time_s']:.2f} "
          f"(rollout {a['rollout_s'] / b['rollout_s']:.2f})")
    rest_b, rest_c = b["time_s"] - b["rollout_s"], c["time_s"] - c["rollout_s"]
    print(f"step time, the first arm / the presets now: {a['time_s'] / c['time_s']:.2f}; the update alone "
          f"(rest), checkpointing / shared prefixes: {rest_b / max(rest_c, 1e-9):.2f}")


if __name__ == "__main__":
    main()
