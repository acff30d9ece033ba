"""The SCoRe split (stage 2): solved MPS tasks -> the SFT set and the RL items.

Seeded and made BY QUESTION (docs/method.md, stages 2-3): solved tasks are grouped by their
normalised question text, the groups are shuffled with `seed`, and the first `sft_share` of
them (50%) form the SFT half, the rest the RL half, so no question is in both. Then, each
decided by its own seeded draw (independent of the other tasks):
- SFT set: the final trajectories of the SFT-half tasks; a trajectory solved with zero
  interventions is kept with probability `keep_zero_intervention` (0.5);
- RL set: the key-step items of the RL-half tasks, plus, for every RL-half task solved
  without interventions, an outcome-only item (empty prefix, `chosen`/`rejected` None) that
  starts RL from the question. Which share of those RL trains on is the trainer's one
  setting, `RLOptions.outcome_only_share`.

`write_split(records, DIR, config)` writes into DIR:
- `split.json`: {"seed", "counts", "sft_tasks": [...], "rl_tasks": [...]} (task ids sorted);
- the SFT set as `sft_trajectories.jsonl` (what `train.sft` reads), `sft_trl.jsonl`,
  `sft_sharegpt.jsonl` + `dataset_info.json` (`exports.export_sft`);
- the RL items as `rl_items.jsonl` (`KeyStepItem` records, what `train.rl` reads) and
  `rl_verl.parquet` (`exports.write_verl`), and, given the tasks MPS ran on, the items' tasks
  as `rl_tasks.jsonl` (what a suite keeps in a task's meta: the reference teacher judges
  key steps from it; `score-distill rl` reads it).

    from score_distill.stages.split import SplitConfig, read_mps_records, write_split
    write_split(read_mps_records("runs/mps"), "runs/mps/export", SplitConfig(seed=0))
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from score_distill.config import option
from score_distill.exports import SFTExample, export_sft, write_verl
from score_distill.seeds import derive_seed
from score_distill.storage import atomic_write_json
from score_distill.types import KeyStepItem, MentorRecord, Task, read_jsonl, write_jsonl


@dataclass
class SplitConfig:
    seed: int = option(0, "seed of the split and of the keep draws")
    sft_share: float = option(0.5, "share of solved questions in the SFT half (the rest go to RL)")
    keep_zero_intervention: float = option(0.5, "probability that an SFT-half trajectory solved without help is kept")


@dataclass
class Split:
    sft_tasks: list[str]
    rl_tasks: list[str]
    sft: list[SFTExample]
    rl: list[KeyStepItem]


def question_key(question: str) -> str:
    """The grouping key of a question: lower case, whitespace collapsed.

    >>> question_key("  How many   Apples? ") == question_key("how many apples?")
    True
    """
    return re.sub(r"\s+", " ", question.strip().lower())


def draw(seed: int, what: str, task_id: str) -> float:
    """A uniform number in [0, 1) for one decision about one task, independent of the others.

    >>> draw(0, "keep", "t1") == draw(0, "keep", "t1") != draw(1, "keep", "t1")
    True
    """
    return random.Random(derive_seed("split", seed, what, task_id)).random()


def split_records(records: list[MentorRecord], cfg: SplitConfig) -> Split:
    """The seeded SFT/RL split of the solved tasks (see the module docstring)."""
    solved = [r for r in records if r.status == "solved"]
    groups: dict[str, list[MentorRecord]] = {}
    for r in solved:
        groups.setdefault(question_key(r.question), []).append(r)
    keys = sorted(groups)
    random.Random(derive_seed("split", cfg.seed, "groups")).shuffle(keys)
    n_sft = round(cfg.sft_share * len(keys))
    # Sorted by id: the split depends on the set of records, not on their order on disk.
    sft_recs = sorted((r for k in keys[:n_sft] for r in groups[k]), key=lambda r: r.task_id)
    rl_recs = sorted((r for k in keys[n_sft:] for r in groups[k]), key=lambda r: r.task_id)
    sft = [SFTExample(r.task_id, r.question, r.answer, r.suite, r.trajectory.steps,
                      {"interventions": len(r.interventions)})
           for r in sft_recs
           if r.interventions or draw(cfg.seed, "keep", r.task_id) < cfg.keep_zero_intervention]
    rl: list[KeyStepItem] = []
    for r in rl_recs:
        rl.extend(r.keysteps)
        if not r.interventions:
            rl.append(KeyStepItem(task_id=r.task_id, question=r.question, answer=r.answer, suite=r.suite,
                                  meta={"outcome_only": True}))
    return Split([r.task_id for r in sft_recs], [r.task_id for r in rl_recs], sft, rl)


def write_split(records: list[MentorRecord], out_dir: str | Path, cfg: SplitConfig,
                tasks: list[Task] | None = None) -> dict[str, Any]:
    """Split the solved MPS tasks and write every export into `out_dir`; returns the counts.
    With `tasks` (those MPS ran on), the RL items' own tasks are written too."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = split_records(records, cfg)
    counts = {"sft_tasks": len(split.sft_tasks), "rl_tasks": len(split.rl_tasks), "sft_examples": len(split.sft),
              "rl_items": len(split.rl), "rl_outcome_only": sum(bool(i.meta.get("outcome_only")) for i in split.rl)}
    atomic_write_json(out / "split.json", {"seed": cfg.seed, "counts": counts, "sft_tasks": split.sft_tasks,
                                           "rl_tasks": split.rl_tasks})
    export_sft(split.sft, out, name="sft")
    write_jsonl(out / "rl_items.jsonl", split.rl)
    wanted = {i.task_id for i in split.rl}
    mine = {t.id: t for t in tasks or [] if t.id in wanted}
    write_verl(split.rl, out / "rl_verl.parquet", mine)
    if tasks is not None:
        write_jsonl(out / "rl_tasks.jsonl", list(mine.values()))
    return counts


def read_mps_records(mps_dir: str | Path) -> list[MentorRecord]:
    """The finished tasks of an MPS output directory, in the order they were first recorded.
    A task recorded twice (a rerun redid it: its teacher could not be reached) counts once,
    with its later record, as the stage itself reads its log."""
    by_id: dict[str, MentorRecord] = {}
    for r in read_jsonl(Path(mps_dir) / "records.jsonl", MentorRecord):
        by_id[r.task_id] = r
    return list(by_id.values())
