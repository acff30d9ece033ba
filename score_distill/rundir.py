"""An output directory remembers the settings it was made with, and resumes only under them.

Every resumable command (`eval`, `bc`, `mentor`, `run`) writes `config.yaml` into its output
directory and skips work already recorded there. A rerun with other settings would mix
records made under two configs while `config.yaml` names only the last, so it is refused
before any work, naming each field that differs. Settings that change speed, not results
(batch sizes, concurrency), may be listed as free by the caller. `RecordLog` is the
append-only file of finished work that such a directory resumes from; `resume_stage` opens a
data stage's directory with both.

    >>> flat({"n": 3, "rollout": {"max_turns": 8, "seed": 0}})
    {'n': 3, 'rollout.max_turns': 8, 'rollout.seed': 0}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from score_distill.config import UsageError, save_config, to_dict
from score_distill.storage import read_log
from score_distill.types import Record, SchemaError

MAX_SHOWN_CHARS = 40


class RunDirConflict(UsageError):
    """The output directory holds a run made with other settings (the command line prints
    it as one line and exits 2)."""


def flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted keys (a dict whose keys are not all strings is a value)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _shown(value: Any) -> str:
    text = "unset" if value is None else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + "..."


def check_run_dir(out: str | Path, config: Any, resume_free: tuple[str, ...] = ()) -> None:
    """Raise `RunDirConflict` when `out/config.yaml` exists and differs from `config` in a
    field not under `resume_free` (a key or a section name); writes nothing."""
    import yaml

    path = Path(out) / "config.yaml"
    if not path.exists():
        return
    old = flat(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    new = flat(json.loads(json.dumps(to_dict(config))))
    # A setting added to the config since the run was made is absent from its config.yaml;
    # the run was made with its default behaviour, so the default is what it is compared at.
    defaults = _defaults(config)
    free = lambda k: any(k == f or k.startswith(f + ".") for f in resume_free)  # noqa: E731
    diff = sorted(k for k in set(old) | set(new)
                  if not free(k) and (old[k] if k in old else defaults.get(k, _ABSENT)) != new.get(k, _ABSENT))
    if diff:
        changes = ", ".join(f"{k} {_shown(old.get(k))} -> {_shown(new.get(k))}" for k in diff)
        raise RunDirConflict(f"{out} holds a run made with other settings ({changes}); rerun with the "
                             "same settings to resume, or use a new output directory")


_ABSENT = object()


def _defaults(config: Any) -> dict[str, Any]:
    """The flat settings of `config`'s class at its defaults ({} when it has none)."""
    try:
        return flat(json.loads(json.dumps(to_dict(type(config)()))))
    except (TypeError, ValueError):
        return {}


def open_run_dir(out: str | Path, config: Any, resume_free: tuple[str, ...] = ()) -> None:
    """`check_run_dir`, then create `out` and save the resolved config as `out/config.yaml`."""
    check_run_dir(out, config, resume_free)
    save_config(config, Path(out) / "config.yaml")


R = TypeVar("R", bound=Record)


class RecordLog(Generic[R]):
    """An append-only JSONL file of finished work: one line per finished item, written with
    one write() + flush + fsync, so a crash loses at most the line being written.

    `load()` cuts a torn last line off the file (the writer died mid-line), then returns the
    records by key; a malformed line elsewhere, or a key seen twice, raises (corruption or
    our bug, not a crash), unless `replaceable(earlier record)` says the work is to be redone:
    then the later line wins. Only one thread appends (the caller's main loop).
    """

    def __init__(self, path: str | Path, cls: type[R], key: Callable[[R], str],
                 replaceable: Callable[[R], bool] | None = None):
        self.path, self.cls, self.key, self.replaceable = Path(path), cls, key, replaceable

    def load(self) -> dict[str, R]:
        if not self.path.exists():
            return {}
        try:
            lines = read_log(self.path)
        except UnicodeError as e:
            raise SchemaError(str(e)) from None
        out: dict[str, R] = {}
        for number, line in lines:
            if not line.strip():
                continue
            try:
                record = self.cls.from_dict(json.loads(line))
            except (json.JSONDecodeError, SchemaError) as e:
                raise SchemaError(f"{self.path}:{number}: {e}") from None
            k = self.key(record)
            if k in out and not (self.replaceable is not None and self.replaceable(out[k])):
                raise SchemaError(f"{self.path}:{number}: {k!r} is recorded twice")
            out[k] = record
        return out

    def append(self, record: R) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(record.to_json() + "\n")
            f.flush()
            os.fsync(f.fileno())


@dataclass
class Resumed(Generic[R]):
    """A data stage's output directory, opened to resume: its record log, the finished
    records by task id, and the ids of `ids` still to do (in their order)."""

    log: RecordLog[R]
    done: dict[str, R]
    todo: list[str]


def resume_stage(out: str | Path, config: Any, resume_free: tuple[str, ...], cls: type[R], ids: list[str],
                 redo: Callable[[R], bool]) -> Resumed[R]:
    """The scaffold every resumable data stage (BC, MPS) starts with: the directory is opened
    under `config` (`open_run_dir`), `records.jsonl` read back (`RecordLog`, one record per
    task id), and a task is to do when it has no record or `redo(record)` (its teacher could
    not be reached). Records of tasks that are not in `ids` mean another run's directory."""
    if len(set(ids)) != len(ids):
        raise ValueError("task ids are not unique")
    open_run_dir(out, config, resume_free)
    log = RecordLog(Path(out) / "records.jsonl", cls, key=lambda r: r.task_id, replaceable=redo)
    done = log.load()
    stray = set(done) - set(ids)
    if stray:
        raise ValueError(f"{log.path} holds tasks this run was not given (e.g. {sorted(stray)[:3]}); "
                         "use a new output directory")
    return Resumed(log, done, [i for i in ids if i not in done or redo(done[i])])
