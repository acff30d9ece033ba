"""The paper's benchmarks: how each is scored, and the files the community ships them in.

Data files are not shipped (their licences are their own): `score-distill eval --benchmark
NAME --data FILE` reads one in any of these formats, detected from its first record:

- ours: the task format (`id`, `question`, `answer`, optional `suite`/`meta`/`reference`);
- the SCoRe release's `inference_data` JSONL: `id`, `question`, `true_answer`;
- ARPO's `evaluation/data/<bench>/test.jsonl`: `question`, `answer` (ids are made from the
  benchmark's name and the line number);
- GAIA's metadata: `Question`, `Final answer` (and `task_id`, kept as the id when present).

Other fields of a record are kept in the task's `meta["fields"]` (data is never dropped). A
record that lacks its format's question or answer, or holds one of the wrong type, is one
line naming the file, the line and the field, and nothing runs (`TaskFileError`, as for a task
file). The benchmarks and their scorers are listed in `tasks/scoring.py` (`BENCHMARKS`).

    tasks = read_benchmark("aime24.jsonl", "aime24")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from score_distill.tasks.scoring import BENCHMARKS, Benchmark
from score_distill.tasks.strict_jsonl import Problems, key_name, records, show
from score_distill.tasks.validate import LIMITS, TaskFileError, task_problems
from score_distill.types import Task


# format name -> (id field or None, question field, answer field)
FORMATS: dict[str, tuple[str | None, str, str]] = {
    "ours": ("id", "question", "answer"),
    "score-release": ("id", "question", "true_answer"),
    "arpo": (None, "question", "answer"),
    "gaia": ("task_id", "Question", "Final answer"),
}


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


def read_benchmark(path: str | Path, name: str) -> list[Task]:
    """The tasks of benchmark `name` in the file `path` (any of `FORMATS`, detected from the
    first record); `TaskFileError` listing every problem, one line each."""
    bench = benchmark(name)
    path = Path(path)
    problems = Problems()
    tasks: list[Task] = []
    fmt: str | None = None
    seen: dict[str, int] = {}
    for n, where, record in records(path, LIMITS.file_bytes, LIMITS.line_bytes, "benchmark file", problems):
        fmt = fmt or detect_format(record)
        if fmt is None:
            problems.append(f"{where}: no answer field: expected answer (ours, ARPO), true_answer (the SCoRe "
                            f"release) or 'Final answer' (GAIA); the record has {', '.join(map(key_name, record))}")
            continue
        data, source = _task_record(record, fmt, bench.name, n)
        if fmt != "ours" and isinstance(data["id"], int):
            data["id"] = str(data["id"])  # community files number their records
        found = [(source.get(field, field), message) for field, message in task_problems(data)]
        if isinstance(data.get("id"), str) and data["id"] in seen:
            found.append((source.get("id", "id"), f"duplicate {show(data['id'])} (first on line {seen[data['id']]})"))
        elif isinstance(data.get("id"), str):
            seen[data["id"]] = n
        problems.extend(f"{where}: {field}: {message}" for field, message in found)
        if not found:
            tasks.append(Task(id=data["id"], question=data["question"], answer=str(data["answer"]),
                              suite=bench.name, meta=data.get("meta", {})))
    if not tasks and not problems.total:
        problems.append(f"{path}: no records (the file is empty or holds only blank lines)")
    if problems.total:
        raise TaskFileError(problems.kept, problems.total)
    return tasks
