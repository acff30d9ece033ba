"""Load tasks from a spec: a generated suite `SUITE:SPLIT` or a JSONL file.

The task file format (one JSON object per line) is the `Task` record of `types.py`:

    {"id": "q1", "question": "...", "answer": "42", "suite": "math",
     "reference": [...optional CodeAct steps...], "meta": {...optional...}}

`schema` may be omitted in files written by other tools; `suite` defaults to "external"
(scored by exact match) and `meta` to {}. A search task names its corpus in
`meta["corpus"]` (a JSONL path of {"id", "title", "text"} or `embedded:<seed>`). A file is
checked in full before it is used (`tasks/validate.py` holds the rules and the size limits):
every problem comes back at once in one `TaskFileError`.

    >>> parse_spec("math:test")
    ('math', 'test', None)
    >>> parse_spec("data/bench.jsonl")
    (None, None, 'data/bench.jsonl')
"""

from __future__ import annotations

from score_distill.tasks.validate import TaskFileError, check_corpus, read_task_file  # noqa: F401 (re-exported)
from score_distill.types import Task

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


def load_tasks(spec: str, n: int | None = None, seed: int = 0, corpus: str = "") -> list[Task]:
    """Tasks for `spec`; `n` caps a file and sizes a generated suite (default 200). A bad
    spec or task file raises TaskFileError (the whole file is checked, whatever `n`), and so
    does a bad `corpus`: the search corpus configured for every task (`tools.search.corpus`)."""
    try:
        suite, split, path = parse_spec(spec)
    except ValueError as e:
        raise TaskFileError([str(e)]) from None
    problems = check_corpus(corpus, "tools.search.corpus") if corpus else []
    if problems:
        raise TaskFileError(problems)
    if path is not None:
        tasks = read_task_file(path)
        return tasks[:n] if n is not None else tasks
    assert suite is not None and split is not None
    return generate_suite(suite, split, n if n is not None else 200, seed)
