"""The SCoRe SFT/RL split (by question, seeded) and the TRL / LLaMA-Factory / verl exports."""

from __future__ import annotations

import json

import pytest

from score_distill.agent.format import SYSTEM_PROMPT, render_step
from score_distill.exports import read_sft_examples
from score_distill.stages.split import SplitConfig, read_mps_records, split_records, write_split
from score_distill.types import MentorRecord
from score_distill.types import Intervention, KeyStepItem, Step, Trajectory, write_jsonl


def steps(n_actions: int, answer: str = "42") -> list[Step]:
    out = [Step(kind="plan", thought="plan it")]
    for i in range(n_actions - 1):
        out.append(Step(kind="action", thought=f"step {i}", code=f"v{i} = {i}\nprint(v{i})", observation=str(i)))
    out.append(Step(kind="action", thought="done", code=f"final_answer({answer})", final_answer=answer,
                    observation="(no output)"))
    return out


def record(i: int, n_interventions: int, status: str = "solved", question: str | None = None) -> MentorRecord:
    q = question or f"question number {i}?"
    traj_steps = steps(3)
    ivs, keys = [], []
    for j in range(n_interventions):
        k = 1 + j
        fixed = Step(kind="action", thought="fix", code=f"v{k} = 1", author="teacher", observation="(no output)")
        mistaken = Step(kind="action", thought="oops", code=f"v{k} = 2", observation="(no output)")
        ivs.append(Intervention(k, mistaken, fixed, "analysis", "suggestion"))
        keys.append(KeyStepItem(task_id=f"t{i}", question=q, answer="42", suite="math", prefix=traj_steps[:k],
                                chosen=fixed, rejected=mistaken, meta={"intervention": j + 1, "step_index": k}))
    traj = Trajectory(task_id=f"t{i}", steps=traj_steps, final_answer="42", finished=True, meta={"status": status})
    return MentorRecord(task_id=f"t{i}", question=q, answer="42", suite="math", status=status, trajectory=traj,
                        interventions=ivs, keysteps=keys if status == "solved" else [])


@pytest.fixture
def records() -> list[MentorRecord]:
    recs = [record(i, i % 3) for i in range(60)]
    # Two ids share one question (a duplicate in the task file): they must land in one half.
    recs += [record(100, 1, question="shared question?"), record(101, 0, question="  Shared   QUESTION? ")]
    recs += [record(200, 3, status="hard_to_teach"), record(201, 0, status="teacher_failed")]
    return recs


def test_split_by_question_no_overlap(records):
    split = split_records(records, SplitConfig(seed=1))
    assert not set(split.sft_tasks) & set(split.rl_tasks)
    assert set(split.sft_tasks) | set(split.rl_tasks) == {r.task_id for r in records if r.status == "solved"}
    questions = {r.task_id: r.question.strip().lower().split() for r in records}
    sft_q = {" ".join(questions[t]) for t in split.sft_tasks}
    rl_q = {" ".join(questions[t]) for t in split.rl_tasks}
    assert not sft_q & rl_q
    assert ("t100" in split.sft_tasks) == ("t101" in split.sft_tasks)
    assert abs(len(split.sft_tasks) - len(split.rl_tasks)) <= 2  # 50/50 by question


def test_split_is_seeded_and_order_free(records):
    a = split_records(records, SplitConfig(seed=3))
    b = split_records(list(reversed(records)), SplitConfig(seed=3))
    c = split_records(records, SplitConfig(seed=4))
    assert a == b
    assert a.sft_tasks != c.sft_tasks


def test_zero_intervention_kept_with_probability(records):
    cfg = SplitConfig(seed=0)
    split = split_records(records, cfg)
    by_id = {r.task_id: r for r in records}
    zero = [t for t in split.sft_tasks if not by_id[t].interventions]
    kept = {e.task_id for e in split.sft}
    assert all(t in kept for t in split.sft_tasks if by_id[t].interventions)
    share = sum(t in kept for t in zero) / len(zero)
    assert 0.2 < share < 0.8  # about half of ~20 draws
    assert {e.task_id for e in split_records(records, SplitConfig(keep_zero_intervention=0.0)).sft} == \
        {t for t in split_records(records, SplitConfig()).sft_tasks if by_id[t].interventions}


def test_rl_items_are_key_steps_plus_outcome_only(records):
    split = split_records(records, SplitConfig(seed=2))
    by_id = {r.task_id: r for r in records}
    assert {i.task_id for i in split.rl} <= set(split.rl_tasks)
    keysteps = [i for i in split.rl if not i.meta.get("outcome_only")]
    outcome = [i for i in split.rl if i.meta.get("outcome_only")]
    assert len(keysteps) == sum(len(by_id[t].keysteps) for t in split.rl_tasks)
    assert {i.task_id for i in outcome} == {t for t in split.rl_tasks if not by_id[t].interventions}
    assert all(i.prefix == [] and i.chosen is None and i.rejected is None for i in outcome)


def test_exports_load_with_documented_columns(records, tmp_path):
    import datasets
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "records.jsonl", records)
    counts = write_split(read_mps_records(tmp_path), tmp_path / "export", SplitConfig(seed=5))
    out = tmp_path / "export"
    split = json.loads((out / "split.json").read_text())
    assert split["counts"] == counts and not set(split["sft_tasks"]) & set(split["rl_tasks"])

    trl = datasets.load_dataset("json", data_files=str(out / "sft_trl.jsonl"), split="train")
    assert trl.column_names == ["messages"] and len(trl) == counts["sft_examples"] > 0
    roles = [m["role"] for m in trl[0]["messages"]]
    assert roles[:2] == ["system", "user"] and roles[-1] == "assistant"
    assert trl[0]["messages"][0]["content"] == SYSTEM_PROMPT

    sharegpt = datasets.load_dataset("json", data_files=str(out / "sft_sharegpt.jsonl"), split="train")
    assert set(sharegpt.column_names) == {"conversations", "system"}
    turns = sharegpt[0]["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) % 2 == 0
    assert turns[2]["value"].startswith("Observation: ")
    info = json.loads((out / "dataset_info.json").read_text())
    [entry] = info.values()
    assert entry["file_name"] == "sft_sharegpt.jsonl" and entry["formatting"] == "sharegpt"
    assert entry["columns"] == {"messages": "conversations", "system": "system"}

    table = pq.read_table(out / "rl_verl.parquet")
    assert table.column_names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    rows = table.to_pylist()
    assert len(rows) == counts["rl_items"] > 0
    verl = datasets.load_dataset("parquet", data_files=str(out / "rl_verl.parquet"), split="train")
    assert len(verl) == len(rows)
    for row in rows:
        x = row["extra_info"]
        assert row["reward_model"] == {"style": "rule", "ground_truth": "42"} and row["ability"] == "math"
        assert row["data_source"] == "score-distill/math"
        assert len(row["prompt"]) == 2 + 2 * x["step_index"] and row["prompt"][-1]["role"] == "user"
        if x["outcome_only"]:
            assert x["chosen"] == x["rejected"] == "" and x["step_index"] == 0
        else:
            chosen = Step.from_json(x["chosen"])
            assert chosen.author == "teacher" and render_step(chosen).startswith("<thought>fix")
            assert len(json.loads(x["prefix"])) == x["step_index"]

    pairs = read_sft_examples(out / "sft_trajectories.jsonl")
    assert len(pairs) == counts["sft_examples"] and all(q.startswith("question") or "hared" in q for q, _ in pairs)
    assert [s.to_dict() for s in pairs[0][1]] == [s.to_dict() for s in steps(3)]


def test_empty_rl_set_still_writes_a_parquet_with_the_schema(tmp_path):
    import pyarrow.parquet as pq

    counts = write_split([record(0, 0, status="hard_to_teach")], tmp_path, SplitConfig())
    assert counts["rl_items"] == 0 and counts["sft_examples"] == 0
    table = pq.read_table(tmp_path / "rl_verl.parquet")
    assert table.num_rows == 0 and "extra_info" in table.column_names
