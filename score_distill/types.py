"""The data contract: tasks, steps, trajectories, interventions and key-step RL items.

Everything score-distill writes to disk is JSONL of these dataclasses. Every record carries
`"schema": SCHEMA_VERSION`; reading a record of another version raises, so a stale file is
caught at once instead of being half-understood.

Text in records is data: whatever a model, a tool or a server produced is stored. The one
rule (`storage.safe_text`): lone surrogates, which UTF-8 cannot encode, become U+FFFD and
a surrogate pair written as two code points becomes its character; nothing else changes.
It is applied when a record is built from JSON (`from_dict`) and when it is written
(`to_json`), so a record read back equals the record written.

A file is rewritten atomically (`write_jsonl` without `append`: temporary file, fsync,
rename) and appended one flushed line at a time; `iter_jsonl` drops a torn last line,
wherever the writer died in it.

    >>> s = Step(kind="action", thought="add", code="print(1 + 1)", observation="2")
    >>> Step.from_dict(s.to_dict()) == s
    True
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Literal, TypeVar

from score_distill.storage import atomic_write_lines, dumps, safe_data, split_jsonl

if TYPE_CHECKING:  # scoring loads sympy (~0.9 s): only a task that is scored pays for it
    from score_distill.tasks.scoring import Score

SCHEMA_VERSION = 1

StepKind = Literal["plan", "action"]
Author = Literal["student", "teacher"]
STEP_KINDS: tuple[str, ...] = ("plan", "action")
AUTHORS: tuple[str, ...] = ("student", "teacher")


class SchemaError(ValueError):
    """A record on disk does not match the data contract (our fault or a stale file)."""


T = TypeVar("T", bound="Record")


class Record:
    """Mixin: JSON round trip with a schema version and nested dataclasses."""

    # Fields that hold nested records: name -> (class, is_list).
    _nested: ClassVar[dict[str, tuple[type, bool]]] = {}
    # Fields left out of the JSON while they are None (read back as their default, None), so
    # records that never set them are written as before the field existed.
    _omit_none: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": SCHEMA_VERSION}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.name in self._omit_none:
                continue
            if f.name in self._nested and value is not None:
                value = [v.to_dict() for v in value] if self._nested[f.name][1] else value.to_dict()
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        if not isinstance(data, dict):
            raise SchemaError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        version = data.get("schema")
        if type(version) is not int or version != SCHEMA_VERSION:  # JSON true / 1.0 are not versions
            raise SchemaError(f"{cls.__name__}: schema version {version!r}, expected {SCHEMA_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names - {"schema"}
        if unknown:
            raise SchemaError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        for name in names & set(data):
            value = data[name]
            if name in cls._nested and value is not None:
                sub, is_list = cls._nested[name]
                if is_list and not isinstance(value, list):
                    raise SchemaError(f"{cls.__name__}.{name}: expected a list, got {type(value).__name__}")
                value = [sub.from_dict(v) for v in value] if is_list else sub.from_dict(value)
            else:
                value = safe_data(value)  # text from a file may hold lone surrogates (JSON escapes)
            kwargs[name] = value
        try:
            obj = cls(**kwargs)
        except TypeError as e:  # a required field is missing
            raise SchemaError(f"{cls.__name__}: {e}") from None
        return obj

    def to_json(self) -> str:
        return dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))


@dataclass
class Step(Record):
    """One assistant turn and what came back from executing it.

    `kind` is "plan" for the first thought (no code, no observation) and "action" otherwise.
    `observation` is the text the agent sees as its next user turn (already formatted by
    `agent.format.format_observation`). `raw` keeps the exact model text when it could not be
    parsed (then `parse_error` says why, and the thought/code fields hold what was salvaged).
    `final_answer` is set when the step's code called `final_answer(...)`.

    `sampled_ids` and `sampled_logprobs` are the token ids the engine sampled for this turn
    and their log-probabilities under its untempered distribution, kept when the rollout is
    asked to (RL trains on them, `train/render.py`'s `render_sampled`); None otherwise, and
    then absent from the record on disk. The ids may differ from the tokenisation of the
    rendered step: the text is cut at the stop string and re-rendered from its parse.
    """

    kind: str
    thought: str
    code: str = ""
    observation: str = ""
    author: str = "student"
    raw: str | None = None
    parse_error: str | None = None
    error: str | None = None
    timed_out: bool = False
    final_answer: str | None = None
    n_tokens: int = 0
    sampled_ids: list[int] | None = None
    sampled_logprobs: list[float] | None = None

    _omit_none: ClassVar[frozenset[str]] = frozenset({"sampled_ids", "sampled_logprobs"})

    def __post_init__(self) -> None:
        if self.kind not in STEP_KINDS:
            raise SchemaError(f"Step.kind must be one of {STEP_KINDS}, got {self.kind!r}")
        if self.author not in AUTHORS:
            raise SchemaError(f"Step.author must be one of {AUTHORS}, got {self.author!r}")

    @property
    def ok(self) -> bool:
        """The step parsed and its code ran without error or timeout."""
        return self.parse_error is None and self.error is None and not self.timed_out


@dataclass
class Task(Record):
    """A question with its gold answer; `reference` is an optional CodeAct solution.

    `suite` names the scorer and tool world ("math", "search", or an external name);
    `meta` holds suite-specific facts (split, template, number of hops, corpus id, ...).
    """

    id: str
    question: str
    answer: str
    suite: str
    reference: list[Step] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    _nested: ClassVar[dict[str, tuple[type, bool]]] = {"reference": (Step, True)}

    def score(self, pred: str | None, scorer: Any = None) -> Score:
        """`pred` scored against this task's gold answer, the way its suite scores (or with
        `scorer`, e.g. an LLM judge for the suites that need one).

        >>> Task("t", "What is 17/4?", "4.25", "math").score("\\\\frac{17}{4}").correct
        True
        """
        from score_distill.tasks.scoring import score_answer

        return score_answer(self.suite, pred, self.answer, self.question, scorer)


@dataclass
class Trajectory(Record):
    """An episode: ordered steps, the final answer if any, and its accounting."""

    task_id: str
    steps: list[Step] = field(default_factory=list)
    final_answer: str | None = None
    finished: bool = False
    score: float | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    model_time_s: float = 0.0
    tool_time_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    _nested: ClassVar[dict[str, tuple[type, bool]]] = {"steps": (Step, True)}

    @property
    def n_turns(self) -> int:
        return len(self.steps)


@dataclass
class Intervention(Record):
    """The teacher's correction of one step: `step_index` indexes the trajectory's steps
    (0 is the first thought). `mistaken` is the student's step, `fixed` the teacher's."""

    step_index: int
    mistaken: Step
    fixed: Step
    analysis: str = ""
    suggestion: str = ""

    _nested: ClassVar[dict[str, tuple[type, bool]]] = {"mistaken": (Step, False), "fixed": (Step, False)}


@dataclass
class KeyStepItem(Record):
    """An RL item: start at the verified `prefix`, the next step is the key step.

    `chosen` is the teacher's step with its observation, `rejected` the student's mistaken
    step with its observation. Items without an intervention (outcome-only RL from the
    question) have an empty prefix and `chosen`/`rejected` set to None.
    """

    task_id: str
    question: str
    answer: str
    suite: str
    prefix: list[Step] = field(default_factory=list)
    chosen: Step | None = None
    rejected: Step | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    _nested: ClassVar[dict[str, tuple[type, bool]]] = {
        "prefix": (Step, True),
        "chosen": (Step, False),
        "rejected": (Step, False),
    }

    @property
    def step_index(self) -> int:
        return len(self.prefix)


R = TypeVar("R", bound=Record)


def write_jsonl(path: str | Path, records: Iterable[Record], append: bool = False) -> int:
    """Write records one per line; returns how many. Without `append` the file is replaced
    atomically (killed mid-write, it keeps its old content); with `append` each line is
    flushed as it is written, so a crash loses at most the line being written."""
    path = Path(path)
    if not append:
        return atomic_write_lines(path, (r.to_json() for r in records))
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a", encoding="utf-8") as f:
        for r in records:
            f.write(r.to_json() + "\n")
            f.flush()
            n += 1
    return n


def read_jsonl(path: str | Path, cls: type[R]) -> list[R]:
    """Read a JSONL file of `cls` records. A torn last line (a crash mid-write) is ignored;
    a malformed line elsewhere raises with its line number."""
    return list(iter_jsonl(path, cls))


def iter_jsonl(path: str | Path, cls: type[R]) -> Iterator[R]:
    """The records of a JSONL file. Only the unterminated last line may be torn (the writer
    died mid-line, perhaps inside a character): it is dropped unless it is a whole record. A
    complete line that is not UTF-8, not JSON or not a record raises `SchemaError` naming
    the file and line."""
    try:
        lines, tail = split_jsonl(Path(path).read_bytes(), str(path))
    except UnicodeError as e:
        raise SchemaError(str(e)) from None
    for number, line in lines:
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise SchemaError(f"{path}:{number}: not JSON ({e})") from None
        yield _record(cls, data, path, number)
    try:  # a last line without its newline: whole (written by hand) or torn
        data = json.loads(tail.decode("utf-8")) if tail.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return
    if data is not None:
        yield _record(cls, data, path, len(lines) + 1)


def _record(cls: type[R], data: Any, path: str | Path, number: int) -> R:
    try:
        return cls.from_dict(data)
    except SchemaError as e:
        raise SchemaError(f"{path}:{number}: {e}") from None


# ---- what the data stages record, one line per finished task


@dataclass
class TaskOutcome(Record):
    """What every data stage records of one task: the task, how it ended, and its trajectory."""

    task_id: str
    question: str
    answer: str
    suite: str
    status: str
    trajectory: Trajectory

    _nested: ClassVar[dict[str, tuple[type, bool]]] = {"trajectory": (Trajectory, False)}


@dataclass
class BCRecord(TaskOutcome):
    """The outcome of one chosen task: kept, rejected (with reason) or teacher_failed."""

    reason: str | None = None
    teacher_calls: int = 0
    teacher_tokens: int = 0


@dataclass
class MentorRecord(TaskOutcome):
    """Everything MPS produced for one task, written as one line when the task finishes."""

    interventions: list[Intervention] = field(default_factory=list)
    keysteps: list[KeyStepItem] = field(default_factory=list)
    reason: str | None = None
    teacher_calls: int = 0
    teacher_tokens: int = 0
    student_tokens: int = 0

    _nested: ClassVar[dict[str, tuple[type, bool]]] = {
        **TaskOutcome._nested, "interventions": (Intervention, True), "keysteps": (KeyStepItem, True)}
