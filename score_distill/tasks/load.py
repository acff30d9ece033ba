"""Load tasks from a spec: a generated suite `SUITE:SPLIT` or a JSONL file.

The task file format (one JSON object per line) is the `Task` record of `types.py`:

    {"id": "q1", "question": "...", "answer": "42", "suite": "math",
     "reference": [...optional CodeAct steps...], "meta": {...optional...}}

`schema` may be omitted in files written by other tools; `suite` defaults to "external"
(scored by exact match) and `meta` to {}. A search task names its corpus in
`meta["corpus"]` (a JSONL path of {"id", "title", "text"} or `embedded:<seed>`).

    >>> parse_spec("math:test")
    ('math', 'test', None)
    >>> parse_spec("data/bench.jsonl")
    (None, None, 'data/bench.jsonl')
"""

from __future__ import annotations

import json
from pathlib import Path

from score_distill.types import SCHEMA_VERSION, SchemaError, Task

SUITES = ("math", "search")
SPLITS = ("train", "dev", "test", "ood")


def parse_spec(spec: str) -> tuple[str | None, str | None, str | None]:
    """`SUITE:SPLIT` -> (suite, split, None); anything else is a file path."""
    if ":" in spec and not spec.endswith(".jsonl"):
        suite, split = spec.split(":", 1)
        if suite not in SUITES:
            raise ValueError(f"unknown suite {suite!r} in {spec!r}; known: {', '.join(SUITES)} (or give a .jsonl file)")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} in {spec!r}; known: {', '.join(SPLITS)}")
        return suite, split, None
    return None, None, spec


def generate_suite(suite: str, split: str, n: int, seed: int, **difficulty: object) -> list[Task]:
    """Generate `n` tasks of a built-in suite (deterministic in `seed` and the difficulty
    dials: `math_suite.MathDifficulty`, `search_suite.Difficulty`)."""
    if suite == "math":
        from score_distill.tasks import math_suite

        return math_suite.generate(split, n, seed, **difficulty)
    if suite == "search":
        from score_distill.tasks import search_suite

        return search_suite.generate(split, n, seed, **difficulty)
    raise ValueError(f"unknown suite {suite!r}")


def read_task_file(path: str | Path) -> list[Task]:
    """Read a task JSONL file, accepting records without `schema`, `suite` or `meta`."""
    tasks, seen = [], set()
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise SchemaError(f"{path}:{i + 1}: not JSON ({e})") from None
        if not isinstance(data, dict):
            raise SchemaError(f"{path}:{i + 1}: expected an object")
        data.setdefault("schema", SCHEMA_VERSION)
        data.setdefault("suite", "external")
        data.setdefault("meta", {})
        data["answer"] = str(data.get("answer", ""))
        try:
            task = Task.from_dict(data)
        except SchemaError as e:
            raise SchemaError(f"{path}:{i + 1}: {e}") from None
        if task.id in seen:
            raise SchemaError(f"{path}:{i + 1}: duplicate task id {task.id!r}")
        seen.add(task.id)
        tasks.append(task)
    return tasks


def load_tasks(spec: str, n: int | None = None, seed: int = 0) -> list[Task]:
    """Tasks for `spec`; `n` caps a file and sizes a generated suite (default 200)."""
    suite, split, path = parse_spec(spec)
    if path is not None:
        tasks = read_task_file(path)
        return tasks[:n] if n is not None else tasks
    assert suite is not None and split is not None
    return generate_suite(suite, split, n if n is not None else 200, seed)
