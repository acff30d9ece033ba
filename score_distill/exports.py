"""Training sets on disk: our own format and the formats other trainers read.

The data stages (`stages/bc.py`, `stages/split.py`) hand their training sets here; nothing
here decides what goes into a set.

`export_sft(examples, DIR, name)` writes an SFT set as:
- `<name>_trajectories.jsonl`: our own format, `Trajectory` records with `meta["question"]`;
  `read_sft_examples` turns it into the (question, steps) pairs that `train.sft` takes. Our
  trainer renders them with `train/render.py`, the single place that decides loss masks;
- `<name>_trl.jsonl`: TRL's conversational format, one {"messages": [{"role", "content"}, ...]}
  per trajectory, from `agent.format.to_messages` (system, question, then assistant steps
  and "Observation: ..." user turns; the observation after the final step is dropped).
  TRL's assistant-only loss needs a chat template with generation markers
  ({% generation %}); with other templates TRL trains on every token, observations included;
- `<name>_sharegpt.jsonl` + `dataset_info.json`: LLaMA-Factory's ShareGPT format, one
  {"conversations": [{"from": "human"|"gpt", "value"}...], "system": SYSTEM_PROMPT} per
  trajectory. Turns alternate human/gpt, starting with the question and ending with the last
  step (an even count, as LLaMA-Factory requires). Observations are "human" turns holding
  "Observation: ...", exactly the user turns our rollout shows the model; LLaMA-Factory's
  "observation" role would be rendered with the template's tool-result wrapper instead.
  `dataset_info.json` is the entry to merge into LLaMA-Factory's data/dataset_info.json
  (formatting "sharegpt", columns messages=conversations and system=system).

`write_verl(items, PATH)` writes RL items (`KeyStepItem`) as verl's RL parquet, one row per
item: `data_source` ("score-distill/<suite>"), `prompt` (chat messages up to the prefix:
system, question, each prefix step and its observation, ready for the key step), `ability`
(the suite), `reward_model` {"style": "rule", "ground_truth": gold answer}, `extra_info`
{"split", "index", "task_id", "step_index", "intervention", "outcome_only", "question",
"prefix", "chosen", "rejected", "task"} where prefix/chosen/rejected are JSON texts of our
`Step` records ("" when absent), which a reward function needs to compare the key step with
the teacher's and student's steps, and `task` the JSON of the item's `Task` when the export
was given the tasks ("" otherwise): what a suite keeps in its meta, which the reference
judge reads. `verl_adapter` runs SCoRe-RL on this file inside verl.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from score_distill.agent.format import SYSTEM_PROMPT, to_messages
from score_distill.storage import atomic_path, atomic_write_json, atomic_write_lines, dumps, safe_data
from score_distill.types import KeyStepItem, Step, Task, Trajectory, read_jsonl, write_jsonl


@dataclass
class SFTExample:
    """A trajectory to fine-tune on: the question and the steps with their observations."""

    task_id: str
    question: str
    answer: str
    suite: str
    steps: list[Step]
    meta: dict[str, Any] = field(default_factory=dict)


def sft_messages(question: str, steps: list[Step]) -> list[dict[str, str]]:
    """Chat messages of a finished trajectory for SFT (no trailing observation).

    >>> [m["role"] for m in sft_messages("q", [Step(kind="plan", thought="p")])]
    ['system', 'user', 'assistant']
    """
    messages = to_messages(question, steps)
    return messages[:-1] if steps else messages


def sharegpt_row(question: str, steps: list[Step]) -> dict[str, Any]:
    """One LLaMA-Factory ShareGPT row.

    >>> [t["from"] for t in sharegpt_row("q", [Step(kind="plan", thought="p")])["conversations"]]
    ['human', 'gpt']
    """
    messages = sft_messages(question, steps)
    names = {"user": "human", "assistant": "gpt"}
    turns = [{"from": names[m["role"]], "value": m["content"]} for m in messages if m["role"] != "system"]
    return {"conversations": turns, "system": messages[0]["content"]}


def dataset_info(name: str, file_name: str) -> dict[str, Any]:
    """The LLaMA-Factory dataset_info.json entry for a ShareGPT file written here."""
    return {name: {"file_name": file_name, "formatting": "sharegpt",
                   "columns": {"messages": "conversations", "system": "system"},
                   "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}}


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_lines(path, (dumps(row) for row in rows))


def export_sft(examples: list[SFTExample], out_dir: str | Path, name: str = "sft") -> dict[str, int]:
    """Write an SFT set in our format, TRL's and LLaMA-Factory's (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trajs = [Trajectory(task_id=e.task_id, steps=e.steps, final_answer=e.steps[-1].final_answer if e.steps else None,
                        finished=True, meta={"question": e.question, "answer": e.answer, "suite": e.suite, **e.meta})
             for e in examples]
    write_jsonl(out / f"{name}_trajectories.jsonl", trajs)
    _write_rows(out / f"{name}_trl.jsonl", [{"messages": sft_messages(e.question, e.steps)} for e in examples])
    _write_rows(out / f"{name}_sharegpt.jsonl", [sharegpt_row(e.question, e.steps) for e in examples])
    info = dataset_info(f"score_distill_{name}", f"{name}_sharegpt.jsonl")
    atomic_write_json(out / "dataset_info.json", info)
    return {name: len(examples)}


def read_sft_examples(path: str | Path) -> list[tuple[str, list[Step]]]:
    """The (question, steps) pairs of a `*_trajectories.jsonl` SFT file, for `train.sft`."""
    return [(t.meta["question"], t.steps) for t in read_jsonl(path, Trajectory)]


def _step_json(step: Step | None) -> str:
    return "" if step is None else step.to_json()


def verl_rows(items: list[KeyStepItem], tasks: dict[str, Task] | None = None) -> list[dict[str, Any]]:
    """verl rows (data_source, prompt, ability, reward_model, extra_info) for RL items, with
    each item's task when `tasks` (by id) holds it."""
    tasks = tasks or {}
    rows = []
    for i, it in enumerate(items):
        rows.append({
            "data_source": f"score-distill/{it.suite}",
            "prompt": to_messages(it.question, it.prefix, system=SYSTEM_PROMPT),
            "ability": it.suite,
            "reward_model": {"style": "rule", "ground_truth": it.answer},
            "extra_info": {"split": "train", "index": i, "task_id": it.task_id, "step_index": it.step_index,
                           "intervention": int(it.meta.get("intervention", 0)),
                           "outcome_only": bool(it.meta.get("outcome_only", False)), "question": it.question,
                           "prefix": dumps([s.to_dict() for s in it.prefix]),
                           "chosen": _step_json(it.chosen), "rejected": _step_json(it.rejected),
                           "task": tasks[it.task_id].to_json() if it.task_id in tasks else ""},
        })
    return rows


def write_verl(items: list[KeyStepItem], path: str | Path, tasks: dict[str, Task] | None = None) -> None:
    """Write RL items as a verl parquet file, with a fixed schema (also for zero rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = pa.string()
    message = pa.struct([("role", text), ("content", text)])
    extra = pa.struct([("split", text), ("index", pa.int64()), ("task_id", text), ("step_index", pa.int64()),
                       ("intervention", pa.int64()), ("outcome_only", pa.bool_()), ("question", text),
                       ("prefix", text), ("chosen", text), ("rejected", text), ("task", text)])
    schema = pa.schema([("data_source", text), ("prompt", pa.list_(message)), ("ability", text),
                        ("reward_model", pa.struct([("style", text), ("ground_truth", text)])),
                        ("extra_info", extra)])
    table = pa.Table.from_pylist(safe_data(verl_rows(items, tasks)), schema=schema)  # Arrow strings are UTF-8
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))
