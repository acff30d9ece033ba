"""Check a task file before any work: every problem at once, one line each, naming file,
line and field.

    tasks = read_task_file("bench.jsonl")     # list[Task], or TaskFileError
    problems = check_task_file("bench.jsonl") # the problem lines, [] when the file is good

A problem line reads `FILE:LINE: FIELD: what is wrong` (`FILE: ...` for the file as a whole).
The commands print the lines on stderr and exit 2 before they write anything, load a model
or start a sandbox. The rules (the README's "Task files" says the same):

- UTF-8 text, one JSON object per line; blank lines are skipped; a byte-order mark at the
  very start of the file is dropped (editors on Windows write one), anywhere else it is an
  error. Strict JSON: no NaN or Infinity, no key twice in one object; the text fields hold
  no lone surrogate (a `"\\ud800"` escape decodes to no character and cannot be stored).
- Fields: `id` (a non-empty string; an integer is refused, not converted, so that ids stay
  the strings the records, `chosen_ids.json` and `--exclude` files hold), `question` (a
  non-empty string), `answer` (a non-empty string, or a number, kept as Python's `str` of
  it: every stage scores against the gold answer, so null or no answer is an error),
  optional `suite` (a non-empty string, default "external"), `meta` (an object, default {}),
  `reference` (null or a list of CodeAct steps; a step's `schema` may be omitted, like the
  task's) and `schema` (1 when given). Any other field is an error, and so are duplicate ids.
- `meta.corpus`, when given, is `embedded:<integer seed>` or a JSONL file (a path relative
  to the working directory, as the search tool opens it) of objects with an `id` and string
  `title` and `text`; each distinct corpus file is checked once, in full.
- Sizes (`Limits`): a task file of at most 256 MiB (checked before it is read), a line of at
  most 8 MiB (a longer line is skipped unread), a question or an answer of at most 65,536
  characters, an id of at most 256; a corpus file of at most 1 GiB.

    >>> for field, message in task_problems({"id": 7, "question": "2+2?", "meta": "math"}):
    ...     print(f"{field}: {message}")
    id: must be a string, got the number 7 (write it as "7")
    answer: missing (every task needs a gold answer)
    meta: must be an object, got the string 'math'
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from score_distill.tasks.strict_jsonl import (MiB, Problems, json_kind, key_name, open_checked, parse_object,
                                              read_lines, records, show)
from score_distill.types import AUTHORS, SCHEMA_VERSION, STEP_KINDS, SchemaError, Step, Task

SHOWN_PROBLEMS = 20  # lines printed; the rest are counted
TASK_FIELDS = ("id", "question", "answer", "suite", "reference", "meta", "schema")


@dataclass(frozen=True)
class Limits:
    """Size bounds of task files (a parameter so tests can lower them)."""

    file_bytes: int = 256 * MiB
    line_bytes: int = 8 * MiB
    question_chars: int = 65_536
    answer_chars: int = 65_536
    id_chars: int = 256
    corpus_bytes: int = 1024 * MiB


LIMITS = Limits()


class TaskFileError(SchemaError):
    """A task file (or its corpus) breaks the rules; `problems` holds one line per problem
    (the first KEPT_PROBLEMS of `total`)."""

    def __init__(self, problems: list[str], total: int | None = None) -> None:
        self.problems = list(problems)
        self.total = len(self.problems) if total is None else total
        super().__init__("\n".join(self.lines()))

    def lines(self, shown: int = SHOWN_PROBLEMS) -> list[str]:
        """The first `shown` problems and, when there are more, a line counting the rest."""
        rest = self.total - min(shown, len(self.problems))
        return self.problems[:shown] + ([f"... and {rest:,} more problems"] if rest > 0 else [])

    def report(self, stream: IO[str]) -> None:
        for line in self.lines():
            print(line, file=stream)


def read_task_file(path: str | Path, limits: Limits = LIMITS) -> list[Task]:
    """The tasks of a JSONL file, or TaskFileError listing every problem in it."""
    tasks, problems = _read(Path(path), limits)
    if problems.total:
        raise TaskFileError(problems.kept, problems.total)
    return tasks


def check_task_file(path: str | Path, limits: Limits = LIMITS) -> list[str]:
    """The problem lines of a task file (the first KEPT_PROBLEMS); [] when it can be used."""
    return _read(Path(path), limits)[1].kept


def check_corpus(spec: str, named_at: str, limits: Limits = LIMITS) -> list[str]:
    """The problem lines of a corpus named outside a task file (`named_at`, e.g. a flag).

    >>> check_corpus("embedded:x", "--tools.search.corpus")
    ["--tools.search.corpus: 'embedded:x' is not embedded:<integer seed>"]
    """
    problems = Problems()
    _check_corpus(spec, named_at, Path("."), limits, problems)
    return problems.kept


def _read(path: Path, limits: Limits) -> tuple[list[Task], Problems]:
    problems = Problems()
    tasks: list[Task] = []
    first_line: dict[str, int] = {}  # task id -> line
    corpora: dict[str, int] = {}  # corpus spec -> first line naming it
    for n, where, data in records(path, limits.file_bytes, limits.line_bytes, "task file", problems):
        found = task_problems(data, limits)
        task_id = data.get("id")
        if isinstance(task_id, str) and task_id.strip():
            if task_id in first_line:
                found.append(("id", f"duplicate {show(task_id)} (first on line {first_line[task_id]})"))
            else:
                first_line[task_id] = n
        problems.extend(f"{where}: {field}: {message}" for field, message in found)
        corpus = data.get("meta", {}).get("corpus") if isinstance(data.get("meta"), dict) else None
        if isinstance(corpus, str) and corpus.strip():
            corpora.setdefault(corpus, n)
        if not found:
            tasks.append(_task(data))
    if not tasks and not problems.total:
        problems.append(f"{path}: no tasks (the file is empty or holds only blank lines)")
    for spec, n in corpora.items():
        _check_corpus(spec, f"{path}:{n}: meta.corpus", path, limits, problems)
    return tasks, problems


def task_problems(data: dict[str, Any], limits: Limits = LIMITS) -> list[tuple[str, str]]:
    """(field, message) for each rule of the module docstring that the record `data` breaks."""
    found = [(key_name(k), "unknown field (a task has " + ", ".join(TASK_FIELDS) + ")")
             for k in data if k not in TASK_FIELDS]
    found += _schema_problem(data)
    task_id = data.get("id")
    if type(task_id) is int and len(str(task_id)) <= 40:
        found.append(("id", f'must be a string, got the number {task_id} (write it as "{task_id}")'))
    else:
        found += _text_problem("id", data, limits.id_chars)
    found += _text_problem("question", data, limits.question_chars)
    answer = data.get("answer")
    if "answer" not in data:
        found.append(("answer", "missing (every task needs a gold answer)"))
    elif answer is None:
        found.append(("answer", "null (every task needs a gold answer)"))
    elif isinstance(answer, (int, float)) and not isinstance(answer, bool):
        if not math.isfinite(answer):  # 1e400 parses as inf
            found.append(("answer", f"the number {answer} is not a finite number"))
    else:
        found += _text_problem("answer", data, limits.answer_chars)
    if "suite" in data:
        found += _text_problem("suite", data, 100)
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        found.append(("meta", f"must be an object, got {json_kind(meta)}"))
    elif "corpus" in meta and not (isinstance(meta["corpus"], str) and meta["corpus"].strip()):
        found.append(("meta.corpus", f"must be a corpus path or embedded:<seed>, got {json_kind(meta['corpus'])}"))
    reference = data.get("reference")
    if reference is not None and not isinstance(reference, list):
        found.append(("reference", f"must be a list of steps or null, got {json_kind(reference)}"))
    elif reference:
        for i, step in enumerate(reference):
            found += [(f"reference[{i}]{sub}", msg) for sub, msg in _step_problems(step)]
    return found


def _schema_problem(data: dict[str, Any]) -> list[tuple[str, str]]:
    if "schema" not in data:
        return []
    version = data["schema"]
    if type(version) is int and version == SCHEMA_VERSION:
        return []
    return [("schema", f"version {show(version)} is not supported; this score-distill reads schema {SCHEMA_VERSION} "
                    "(or a record without `schema`)")]


def _text_problem(field: str, data: dict[str, Any], max_chars: int) -> list[tuple[str, str]]:
    """A required field that must hold non-empty text of at most `max_chars` characters."""
    if field not in data:
        return [(field, "missing")]
    value = data[field]
    if not isinstance(value, str):
        return [(field, f"must be a string, got {json_kind(value)}")]
    if not value.strip():
        return [(field, "empty")]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a JSON escape such as "\\ud800" decodes to no character
        return [(field, f"holds a lone surrogate {value[e.start]!r} at character {e.start + 1}, which is not text")]
    if len(value) > max_chars:
        return [(field, f"{len(value):,} characters, over the limit of {max_chars:,}")]
    return []


def _step_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Step)
    return {f.name: hints[f.name] for f in dataclasses.fields(Step)}


STEP_TYPES = _step_types()
STEP_REQUIRED = tuple(f.name for f in dataclasses.fields(Step) if f.default is dataclasses.MISSING)


def _step_problems(step: Any) -> list[tuple[str, str]]:
    """(".field", message) for a reference step that `Step.from_dict` would refuse or that
    holds a value of the wrong type."""
    if not isinstance(step, dict):
        return [("", f"expected a step object, got {json_kind(step)}")]
    found = [(f".{key_name(k)}", "unknown field of a step") for k in step if k not in STEP_TYPES and k != "schema"]
    found += [(f".{sub}", msg) for sub, msg in _schema_problem(step)]
    found += [(f".{name}", "missing") for name in STEP_REQUIRED if name not in step]
    for name, hint in STEP_TYPES.items():
        if name in step and not _fits(step[name], hint):
            found.append((f".{name}", f"must be {_hint_name(hint)}, got {json_kind(step[name])}"))
    if isinstance(step.get("kind"), str) and step["kind"] not in STEP_KINDS:
        found.append((".kind", f"must be one of {', '.join(STEP_KINDS)}, got {show(step['kind'])}"))
    if isinstance(step.get("author"), str) and step["author"] not in AUTHORS:
        found.append((".author", f"must be one of {', '.join(AUTHORS)}, got {show(step['author'])}"))
    return found


def _fits(value: Any, hint: Any) -> bool:
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(hint))
    if hint in (bool, int):  # JSON true is not a count, 1 is not a flag
        return type(value) is hint
    return isinstance(value, hint)


def _hint_name(hint: Any) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", type(None): "null"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(names.get(a, str(a)) for a in typing.get_args(hint))
    return names.get(hint, str(hint))


def _task(data: dict[str, Any]) -> Task:
    """The Task of a record that passed `task_problems`."""
    reference = data.get("reference")
    steps = [Step.from_dict({**s, "schema": SCHEMA_VERSION}) for s in reference] if reference is not None else None
    return Task(id=data["id"], question=data["question"], answer=str(data["answer"]),
                suite=data.get("suite", "external"), reference=steps, meta=data.get("meta", {}))


def _check_corpus(spec: str, named_at: str, task_file: Path, limits: Limits, problems: Problems) -> None:
    """The problems of a search corpus: its spec (at `named_at`), then its file's lines."""
    if spec.startswith("embedded:"):
        if not spec[len("embedded:"):].lstrip("-").isdigit():
            problems.append(f"{named_at}: {show(spec)} is not embedded:<integer seed>")
        return
    path = Path(spec)
    opened = open_checked(path, limits.corpus_bytes, "corpus file")
    if isinstance(opened, str):
        hint = task_file.parent / spec
        also = f" (paths are relative to the working directory; did you mean {hint}?)" if hint.is_file() else ""
        problems.append(f"{named_at}: {opened} ({spec}){also}")
        return
    before, docs = problems.total, 0
    with opened as f:
        for n, text in read_lines(f, path, limits.line_bytes, problems):
            doc = parse_object(text, f"{path}:{n}", problems)
            if doc is None:
                continue
            docs += 1
            if "id" not in doc:
                problems.append(f"{path}:{n}: id: missing")
            for field in ("title", "text"):
                if field not in doc:
                    problems.append(f"{path}:{n}: {field}: missing")
                elif not isinstance(doc[field], str):
                    problems.append(f"{path}:{n}: {field}: must be a string, got {json_kind(doc[field])}")
    if not docs and problems.total == before:
        problems.append(f"{path}: no documents in this corpus (named at {named_at.rsplit(': ', 1)[0]})")
