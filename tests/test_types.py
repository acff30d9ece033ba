"""Tests of the data contract: JSON round trips of every record, schema versions, unknown
fields, and JSONL reading that tolerates a torn last line only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from score_distill.types import (SCHEMA_VERSION, Intervention, KeyStepItem, Record, SchemaError, Step, Task,
                                 Trajectory, iter_jsonl, read_jsonl, write_jsonl)

# --- strategies ----------------------------------------------------------------------------

_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63),
                          st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(_json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
metas = st.dictionaries(st.text(max_size=10), json_values, max_size=4)
texts = st.text(max_size=60)
opt_texts = st.none() | texts

steps = st.builds(
    Step, kind=st.sampled_from(["plan", "action"]), thought=texts, code=texts, observation=texts,
    author=st.sampled_from(["student", "teacher"]), raw=opt_texts, parse_error=opt_texts, error=opt_texts,
    timed_out=st.booleans(), final_answer=opt_texts, n_tokens=st.integers(0, 10_000))
step_lists = st.lists(steps, max_size=4)
tasks = st.builds(Task, id=texts, question=texts, answer=texts, suite=st.sampled_from(["math", "search", "x"]),
                  reference=st.none() | step_lists, meta=metas)
trajectories = st.builds(
    Trajectory, task_id=texts, steps=step_lists, final_answer=opt_texts, finished=st.booleans(),
    score=st.none() | st.floats(0, 1), prompt_tokens=st.integers(0, 10**6), generated_tokens=st.integers(0, 10**6),
    model_time_s=st.floats(0, 1e4), tool_time_s=st.floats(0, 1e4), meta=metas)
interventions = st.builds(Intervention, step_index=st.integers(0, 8), mistaken=steps, fixed=steps,
                          analysis=texts, suggestion=texts)
key_steps = st.builds(KeyStepItem, task_id=texts, question=texts, answer=texts, suite=texts, prefix=step_lists,
                      chosen=st.none() | steps, rejected=st.none() | steps, meta=metas)
records = st.one_of(steps, tasks, trajectories, interventions, key_steps)

RECORD_TYPES: list[type[Record]] = [Step, Task, Trajectory, Intervention, KeyStepItem]


# --- round trips ---------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(records)
def test_every_record_round_trips_through_json(record: Record) -> None:
    cls = type(record)
    assert cls.from_json(record.to_json()) == record
    assert cls.from_dict(json.loads(json.dumps(record.to_dict()))) == record


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(trajectories, max_size=5))
def test_jsonl_file_round_trip(tmp_path: Path, trajs: list[Trajectory]) -> None:
    path = tmp_path / "sub" / "t.jsonl"
    assert write_jsonl(path, trajs) == len(trajs)
    assert read_jsonl(path, Trajectory) == trajs
    assert write_jsonl(path, trajs[:1], append=True) == len(trajs[:1])
    assert read_jsonl(path, Trajectory) == trajs + trajs[:1]


@settings(max_examples=60, deadline=None)
@given(records)
def test_schema_version_is_in_every_record_including_nested_ones(record: Record) -> None:
    data = record.to_dict()
    assert data["schema"] == SCHEMA_VERSION
    nested_keys = ("steps", "reference", "prefix", "chosen", "rejected", "mistaken", "fixed")
    for key in nested_keys:
        value = data.get(key)
        for item in value if isinstance(value, list) else [] if value is None else [value]:
            assert item["schema"] == SCHEMA_VERSION, key


def test_task_with_reference_keeps_its_steps() -> None:
    ref = [Step(kind="plan", thought="p", author="teacher"),
           Step(kind="action", thought="t", code="final_answer(3)", observation="3", final_answer="3")]
    task = Task(id="q1", question="1+2?", answer="3", suite="math", reference=ref, meta={"split": "test"})
    back = Task.from_json(task.to_json())
    assert back == task and back.reference is not None and isinstance(back.reference[1], Step)


def test_properties_of_records() -> None:
    s = Step(kind="action", thought="t", code="x")
    assert s.ok
    assert not Step(kind="action", thought="t", timed_out=True).ok
    assert not Step(kind="action", thought="t", parse_error="x").ok
    assert Trajectory(task_id="a", steps=[s, s]).n_turns == 2
    assert KeyStepItem(task_id="a", question="q", answer="1", suite="math", prefix=[s, s, s]).step_index == 3


# --- schema errors -------------------------------------------------------------------------

def _minimal(cls: type[Record]) -> Record:
    step = Step(kind="plan", thought="p")
    return {
        Step: step,
        Task: Task(id="a", question="q", answer="1", suite="math"),
        Trajectory: Trajectory(task_id="a", steps=[step]),
        Intervention: Intervention(step_index=0, mistaken=step, fixed=step),
        KeyStepItem: KeyStepItem(task_id="a", question="q", answer="1", suite="math", chosen=step),
    }[cls]


@pytest.mark.parametrize("cls", RECORD_TYPES)
@pytest.mark.parametrize("version", [None, 0, 2, "1", SCHEMA_VERSION + 1])
def test_wrong_or_missing_schema_version_raises(cls: type[Record], version: object) -> None:
    data = _minimal(cls).to_dict()
    if version is None:
        del data["schema"]
    else:
        data["schema"] = version
    with pytest.raises(SchemaError, match="schema version"):
        cls.from_dict(data)


@pytest.mark.parametrize("cls", [Trajectory, Intervention, KeyStepItem])
def test_wrong_version_in_a_nested_record_raises(cls: type[Record]) -> None:
    data = _minimal(cls).to_dict()
    key = {"Trajectory": "steps", "Intervention": "fixed", "KeyStepItem": "chosen"}[cls.__name__]
    nested = data[key][0] if isinstance(data[key], list) else data[key]
    nested["schema"] = SCHEMA_VERSION + 1
    with pytest.raises(SchemaError):
        cls.from_dict(data)


@pytest.mark.parametrize("version", [True, 1.0])
def test_schema_version_must_be_the_integer(version: object) -> None:
    data = _minimal(Step).to_dict()
    data["schema"] = version
    with pytest.raises(SchemaError):
        Step.from_dict(data)


@pytest.mark.parametrize("cls", RECORD_TYPES)
def test_unknown_fields_raise(cls: type[Record]) -> None:
    data = _minimal(cls).to_dict()
    data["surprise"] = 1
    with pytest.raises(SchemaError, match="unknown fields"):
        cls.from_dict(data)


def test_missing_required_field_and_bad_values_raise_schema_errors() -> None:
    with pytest.raises(SchemaError):
        Task.from_dict({"schema": SCHEMA_VERSION, "id": "a", "question": "q"})
    with pytest.raises(SchemaError, match="kind"):
        Step.from_dict({"schema": SCHEMA_VERSION, "kind": "reflection", "thought": "x"})
    with pytest.raises(SchemaError, match="author"):
        Step.from_dict({"schema": SCHEMA_VERSION, "kind": "plan", "thought": "x", "author": "oracle"})
    with pytest.raises(SchemaError, match="expected an object"):
        Step.from_dict(["not", "a", "dict"])  # type: ignore[arg-type]


def test_a_nested_list_field_of_the_wrong_type_raises_schema_error() -> None:
    with pytest.raises(SchemaError):
        Trajectory.from_dict({"schema": SCHEMA_VERSION, "task_id": "a", "steps": 5})


# --- JSONL reading -------------------------------------------------------------------------

def _lines(n: int) -> list[str]:
    return [Step(kind="plan", thought=f"p{i}").to_json() for i in range(n)]


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    lines = _lines(3)
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2], encoding="utf-8")
    assert [s.thought for s in read_jsonl(path, Step)] == ["p0", "p1"]


def test_malformed_middle_line_raises_with_its_line_number(tmp_path: Path) -> None:
    lines = _lines(4)
    lines[2] = lines[2][:10]
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"s\.jsonl:3: not JSON"):
        read_jsonl(path, Step)


def test_malformed_last_line_with_newline_is_not_torn(tmp_path: Path) -> None:
    # A line that ends with a newline was written completely: garbage there is an error.
    lines = _lines(2) + ["{oops"]
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=":3:"):
        read_jsonl(path, Step)


def test_schema_error_inside_a_file_names_the_line(tmp_path: Path) -> None:
    lines = _lines(3)
    data = json.loads(lines[1])
    data["schema"] = 99
    lines[1] = json.dumps(data)
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r":2: Step: schema version 99"):
        list(iter_jsonl(path, Step))


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text("\n" + "\n\n".join(_lines(2)) + "\n\n", encoding="utf-8")
    assert len(read_jsonl(path, Step)) == 2


def test_atomic_dir_replaces_a_whole_directory_or_nothing(tmp_path):
    from score_distill.storage import atomic_dir

    target = tmp_path / "final"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"] and (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("half")
            raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in target.iterdir()) == ["a"]  # the old directory, whole
    with atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_read_log_cuts_a_torn_tail_before_the_next_append(tmp_path):
    from score_distill.storage import read_log

    log = tmp_path / "log.jsonl"
    log.write_bytes('{"a": 1}\n{"b": "é'.encode()[:-1])
    assert read_log(log) == [(1, '{"a": 1}')] and log.read_bytes() == b'{"a": 1}\n'
    log.write_bytes(b'{"a": 1}\n\xff\n')
    with pytest.raises(UnicodeError, match="log.jsonl:2: not UTF-8"):
        read_log(log)
