"""The paper's benchmarks: how each is scored, and the files the community ships them in.

Data files are not shipped (their licences are their own): `score-distill eval --benchmark
NAME --data FILE` reads one in any of these formats. A file that holds one JSON document (it
opens with `[`, its first line is not a whole JSON value, or that value has an `examples`
list) is agent-distillation's; any other is JSONL, its format detected from its first record:

- ours: the task format (`id`, `question`, `answer`, optional `suite`/`meta`/`reference`);
- the SCoRe release's `inference_data` JSONL: `id`, `question`, `true_answer`;
- ARPO's `evaluation/data/<bench>/test.jsonl`: `question`, `answer` (ids are made from the
  benchmark's name and the line number);
- GAIA's metadata: `Question`, `Final answer` (and `task_id`, kept as the id when present);
- agent-distillation's `data_processor/*_dataset/test/*.json`: one JSON object,
  `{"metadata": {...}, "examples": [{"id", "question", "answer", ...}, ...]}` (a bare list of
  such records is read too); its ids are numbers or strings, its answers strings or numbers.
  A record is named by its place, `FILE:examples[3]`, where a JSONL record is named by its line.

Other fields of a record are kept in the task's `meta["fields"]` (a record's data is never
dropped; the `metadata` of an agent-distillation file, about the whole set, is not copied into
its tasks). A record that lacks its format's question or answer, or holds one of the wrong
type, is one line naming the file, the record (its line, or its place in a document) and the
field, and nothing runs (`TaskFileError`, as for a task file). The benchmarks and their scorers are listed in `tasks/scoring.py` (`BENCHMARKS`).

    tasks = read_benchmark("aime24.jsonl", "aime24")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from score_distill.tasks.scoring import BENCHMARKS, Benchmark
from score_distill.tasks.strict_jsonl import (BOM, Problems, json_kind, key_name, open_checked, parse_json, records,
                                              show)
from score_distill.tasks.validate import LIMITS, TaskFileError, task_problems
from score_distill.types import Task


# format name -> (id field or None, question field, answer field)
FORMATS: dict[str, tuple[str | None, str, str]] = {
    "ours": ("id", "question", "answer"),
    "score-release": ("id", "question", "true_answer"),
    "arpo": (None, "question", "answer"),
    "gaia": ("task_id", "Question", "Final answer"),
    "agent-distillation": ("id", "question", "answer"),
}
DOCUMENT_FORMAT = "agent-distillation"  # the one format that is a JSON document, not JSON lines


def benchmark(name: str) -> Benchmark:
    """The benchmark called `name` (case-insensitive); ValueError naming the known ones."""
    found = BENCHMARKS.get(name.lower())
    if found is None:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)} (score-distill benchmarks)")
    return found


def detect_format(record: dict[str, Any]) -> str | None:
    """The format a record is written in, or None.

    >>> detect_format({"id": "a", "question": "q", "true_answer": "1"}), detect_format({"Question": "q"})
    ('score-release', 'gaia')
    >>> detect_format({"question": "q", "answer": 1}), detect_format({"id": "x", "question": "q", "answer": 1})
    ('arpo', 'ours')
    """
    if "true_answer" in record:
        return "score-release"
    if "Question" in record or "Final answer" in record:
        return "gaia"
    if "answer" in record:
        return "ours" if "id" in record else "arpo"
    return None


def _task_record(record: dict[str, Any], fmt: str, name: str, line: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Our task record for a benchmark record, and which source field each of ours came from."""
    if fmt == "ours":
        return {**record, "suite": name}, {}
    id_field, question_field, answer_field = FORMATS[fmt]
    task_id = record.get(id_field) if id_field else None
    data: dict[str, Any] = {"id": task_id if task_id is not None else f"{name}-{line}", "suite": name}
    for ours, theirs in (("question", question_field), ("answer", answer_field)):
        if theirs in record:
            data[ours] = record[theirs]
    extra = {k: v for k, v in record.items() if k not in (id_field, question_field, answer_field)}
    if extra:
        data["meta"] = {"fields": extra}
    return data, {"id": id_field or "id", "question": question_field, "answer": answer_field}


def is_document(path: Path) -> bool:
    """Whether the file holds one JSON document (agent-distillation's) rather than JSON lines:
    it opens with `[`, or its first non-blank line is not a whole JSON value (a pretty-printed
    object), or that value has an `examples` list (a document on one line). A file that cannot
    be read is not one: the JSONL reader reports why."""
    try:
        with path.open("rb") as f:
            line = b""
            while not line.strip():
                line = f.readline(LIMITS.line_bytes + 1)
                if not line:
                    return False
    except OSError:
        return False
    text = line.removeprefix(BOM).decode("utf-8", errors="replace").strip()
    if text.startswith("["):
        return True
    ok, value = parse_json(text, "", Problems())
    if not ok:
        return text.startswith("{")
    return isinstance(value, dict) and isinstance(value.get("examples"), list)


def document_records(path: Path, problems: Problems) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(index, "FILE:examples[i]", record) of each record of a JSON document; a file that is
    not one, or a record that is not an object, becomes a problem instead."""
    opened = open_checked(path, LIMITS.file_bytes, "benchmark file")
    if isinstance(opened, str):
        problems.append(f"{path}: {opened}")
        return
    with opened as f:
        raw = f.read().removeprefix(BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.append(f"{path}: not UTF-8: byte 0x{raw[e.start]:02x} at byte {e.start + 1}")
        return
    ok, document = parse_json(text, str(path), problems)
    if not ok:
        return
    if isinstance(document, dict) and isinstance(document.get("examples"), list):
        items, field = document["examples"], "examples"
    elif isinstance(document, list):
        items, field = document, ""
    else:
        got = f"an object of {', '.join(map(key_name, document)) or 'no keys'}" if isinstance(document, dict) \
            else json_kind(document)
        problems.append(f"{path}: expected an object with an 'examples' list (agent-distillation) or a list of "
                        f"records, got {got}")
        return
    for i, record in enumerate(items):
        where = f"{path}:{field}[{i}]"
        if isinstance(record, dict):
            yield i, where, record
        else:
            problems.append(f"{where}: expected a JSON object (one record), got {json_kind(record)}")


def read_benchmark(path: str | Path, name: str) -> list[Task]:
    """The tasks of benchmark `name` in the file `path` (any of `FORMATS`: a JSON document is
    agent-distillation's, JSONL is detected from its first record); `TaskFileError` listing
    every problem, one line each."""
    bench = benchmark(name)
    path = Path(path)
    problems = Problems()
    tasks: list[Task] = []
    document = is_document(path)
    fmt: str | None = DOCUMENT_FORMAT if document else None
    source = (document_records(path, problems) if document
              else records(path, LIMITS.file_bytes, LIMITS.line_bytes, "benchmark file", problems))
    seen: dict[str, str] = {}  # id -> where it was first, "line 3" or "examples[3]"
    for n, where, record in source:
        fmt = fmt or detect_format(record)
        if fmt is None:
            problems.append(f"{where}: no answer field: expected answer (ours, ARPO), true_answer (the SCoRe "
                            f"release) or 'Final answer' (GAIA); the record has {', '.join(map(key_name, record))}")
            continue
        data, source_field = _task_record(record, fmt, bench.name, n)
        if fmt != "ours" and isinstance(data["id"], int):
            data["id"] = str(data["id"])  # community files number their records
        found = [(source_field.get(field, field), message) for field, message in task_problems(data)]
        if isinstance(data.get("id"), str) and data["id"] in seen:
            found.append((source_field.get("id", "id"), f"duplicate {show(data['id'])} (first {seen[data['id']]})"))
        elif isinstance(data.get("id"), str):
            seen[data["id"]] = f"at {where.removeprefix(f'{path}:')}" if document else f"on line {n}"
        problems.extend(f"{where}: {field}: {message}" for field, message in found)
        if not found:
            tasks.append(Task(id=data["id"], question=data["question"], answer=str(data["answer"]),
                              suite=bench.name, meta=data.get("meta", {})))
    if not tasks and not problems.total:
        problems.append(f"{path}: no records (the file is empty or holds only blank lines)")
    if problems.total:
        raise TaskFileError(problems.kept, problems.total)
    return tasks
