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
import json
import math
import stat
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from score_distill.types import AUTHORS, SCHEMA_VERSION, STEP_KINDS, SchemaError, Step, Task

MiB = 2**20
SHOWN_PROBLEMS = 20  # lines printed; the rest are counted
KEPT_PROBLEMS = 1000  # lines kept; past them a file of a million bad lines is only counted
TASK_FIELDS = ("id", "question", "answer", "suite", "reference", "meta", "schema")
BOM = b"\xef\xbb\xbf"


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


class Problems:
    """The problem lines found so far: the first KEPT_PROBLEMS kept, all of them counted."""

    def __init__(self) -> None:
        self.kept: list[str] = []
        self.total = 0

    def append(self, line: str) -> None:
        self.total += 1
        if len(self.kept) < KEPT_PROBLEMS:
            self.kept.append(line)

    def extend(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.append(line)


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
    opened = _open(path, limits.file_bytes, "task file")
    if isinstance(opened, str):
        problems.append(f"{path}: {opened}")
        return [], problems
    tasks: list[Task] = []
    first_line: dict[str, int] = {}  # task id -> line
    corpora: dict[str, int] = {}  # corpus spec -> first line naming it
    with opened as f:
        for n, text in _lines(f, path, limits.line_bytes, problems):
            where = f"{path}:{n}"
            data = _parse(text, where, problems)
            if data is None:
                continue
            found = task_problems(data, limits)
            task_id = data.get("id")
            if isinstance(task_id, str) and task_id.strip():
                if task_id in first_line:
                    found.append(("id", f"duplicate {_show(task_id)} (first on line {first_line[task_id]})"))
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


def _open(path: Path, max_bytes: int, what: str) -> IO[bytes] | str:
    """The file opened for reading, or what makes it unusable; its size is checked before a
    byte is read (and a FIFO or a device is never opened)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return f"no such {what}"
    except OSError as e:
        return f"cannot read this {what} ({e.strerror})"
    if not stat.S_ISREG(info.st_mode):
        return f"not a regular file, so not a {what}"
    if info.st_size > max_bytes:
        return f"{_size(info.st_size)}, over the {_size(max_bytes)} limit of a {what}; split it"
    try:
        return path.open("rb")
    except OSError as e:
        return f"cannot read this {what} ({e.strerror})"


def _lines(f: IO[bytes], path: Path, max_bytes: int, problems: Problems) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines; a line too long or not UTF-8 becomes a
    problem instead. A longer line is read in chunks and dropped past `max_bytes`."""
    n = 0
    while True:
        raw, size = _read_line(f, max_bytes)
        if not size:
            return
        n += 1
        if raw is None:
            problems.append(f"{path}:{n}: line of {size:,} bytes, over the limit of {max_bytes:,} (not read)")
            continue
        if n == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{path}:{n}: not UTF-8: byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line")
            continue
        if text.strip():
            yield n, text


def _read_line(f: IO[bytes], max_bytes: int, chunk: int = MiB) -> tuple[bytes | None, int]:
    """The next line and its size in bytes; None for a line over `max_bytes` without its
    newline (its chunks are let go as they come, so it is never held whole); (b"", 0) at
    the end of the file."""
    parts: list[bytes] | None = []
    size, ended = 0, False
    while not ended and (part := f.readline(chunk)):
        size += len(part)
        ended = part.endswith(b"\n")
        if parts is not None:
            parts.append(part)
            if size - ended > max_bytes:
                parts = None
    return (b"".join(parts) if parts is not None else None), size


def _parse(text: str, where: str, problems: Problems) -> dict[str, Any] | None:
    """The line's JSON object, or None with its problem recorded."""
    if text.lstrip().startswith("\ufeff"):
        problems.append(f"{where}: a byte-order mark (U+FEFF) starts this line; only the file's first line may have one")
        return None
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        data = dict(items)
        if len(data) < len(items):
            seen: set[str] = set()
            for k, _ in items:
                if k in seen:
                    repeated.append(k)
                seen.add(k)
        return data

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON value")

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as e:
        problems.append(f"{where}: not JSON: {e.msg} at column {e.colno}")
        return None
    except ValueError as e:  # NaN / Infinity, an integer of over 4,300 digits
        problems.append(f"{where}: not JSON: {str(e).split(':')[0]}")
        return None
    except RecursionError:
        problems.append(f"{where}: not JSON: nested too deeply")
        return None
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a JSON object (one task), got {_kind(data)}")
        return None
    if repeated:
        problems.extend(f"{where}: {_name(k)}: the key appears twice in one object" for k in dict.fromkeys(repeated))
        return None
    return data


def task_problems(data: dict[str, Any], limits: Limits = LIMITS) -> list[tuple[str, str]]:
    """(field, message) for each rule of the module docstring that the record `data` breaks."""
    found = [(_name(k), "unknown field (a task has " + ", ".join(TASK_FIELDS) + ")") for k in data if k not in TASK_FIELDS]
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
        found.append(("meta", f"must be an object, got {_kind(meta)}"))
    elif "corpus" in meta and not (isinstance(meta["corpus"], str) and meta["corpus"].strip()):
        found.append(("meta.corpus", f"must be a corpus path or embedded:<seed>, got {_kind(meta['corpus'])}"))
    reference = data.get("reference")
    if reference is not None and not isinstance(reference, list):
        found.append(("reference", f"must be a list of steps or null, got {_kind(reference)}"))
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
    return [("schema", f"version {_show(version)} is not supported; this score-distill reads schema {SCHEMA_VERSION} "
                    "(or a record without `schema`)")]


def _text_problem(field: str, data: dict[str, Any], max_chars: int) -> list[tuple[str, str]]:
    """A required field that must hold non-empty text of at most `max_chars` characters."""
    if field not in data:
        return [(field, "missing")]
    value = data[field]
    if not isinstance(value, str):
        return [(field, f"must be a string, got {_kind(value)}")]
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
        return [("", f"expected a step object, got {_kind(step)}")]
    found = [(f".{_name(k)}", "unknown field of a step") for k in step if k not in STEP_TYPES and k != "schema"]
    found += [(f".{sub}", msg) for sub, msg in _schema_problem(step)]
    found += [(f".{name}", "missing") for name in STEP_REQUIRED if name not in step]
    for name, hint in STEP_TYPES.items():
        if name in step and not _fits(step[name], hint):
            found.append((f".{name}", f"must be {_hint_name(hint)}, got {_kind(step[name])}"))
    if isinstance(step.get("kind"), str) and step["kind"] not in STEP_KINDS:
        found.append((".kind", f"must be one of {', '.join(STEP_KINDS)}, got {_show(step['kind'])}"))
    if isinstance(step.get("author"), str) and step["author"] not in AUTHORS:
        found.append((".author", f"must be one of {', '.join(AUTHORS)}, got {_show(step['author'])}"))
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
            problems.append(f"{named_at}: {_show(spec)} is not embedded:<integer seed>")
        return
    path = Path(spec)
    opened = _open(path, limits.corpus_bytes, "corpus file")
    if isinstance(opened, str):
        hint = task_file.parent / spec
        also = f" (paths are relative to the working directory; did you mean {hint}?)" if hint.is_file() else ""
        problems.append(f"{named_at}: {opened} ({spec}){also}")
        return
    before, docs = problems.total, 0
    with opened as f:
        for n, text in _lines(f, path, limits.line_bytes, problems):
            doc = _parse(text, f"{path}:{n}", problems)
            if doc is None:
                continue
            docs += 1
            if "id" not in doc:
                problems.append(f"{path}:{n}: id: missing")
            for field in ("title", "text"):
                if field not in doc:
                    problems.append(f"{path}:{n}: {field}: missing")
                elif not isinstance(doc[field], str):
                    problems.append(f"{path}:{n}: {field}: must be a string, got {_kind(doc[field])}")
    if not docs and problems.total == before:
        problems.append(f"{path}: no documents in this corpus (named at {named_at.rsplit(': ', 1)[0]})")


def _size(n: int) -> str:
    """A byte count for a message: "300.0 MiB", "256 MiB", "10 bytes"."""
    if n < MiB:
        return f"{n:,} bytes"
    return f"{n // MiB:,} MiB" if n % MiB == 0 else f"{n / MiB:,.1f} MiB"


def _kind(value: Any) -> str:
    """How a JSON value is named in a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {_show(value)}"
    if isinstance(value, str):
        return f"the string {_show(value)}"
    return "a list" if isinstance(value, list) else "an object"


def _show(value: Any, width: int = 60) -> str:
    """repr of a value cut to `width`, so a message stays one short line."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _name(key: str) -> str:
    """A field name as shown in a message: as it is when it is short and printable."""
    return key if key.isprintable() and len(key) <= 40 and key else _show(key, 40)
