"""The strict JSONL reader behind the task-file and corpus checks (tasks/validate.py).

Reading never stops at the first problem: each one becomes a line in a `Problems`, named by
file and line, and the reader goes on. `open_checked` refuses a file that is missing, not a
regular file or over its size limit before a byte is read; `read_lines` yields the non-blank
lines, recording those too long (never held whole) or not UTF-8, and drops a byte-order mark
at the very start; `parse_object` takes one line as one strict JSON object (no NaN or
Infinity, no key twice) through `parse_json`, which also reads whole JSON documents.
`json_kind`, `show` and `key_name` name values and keys in the messages, so that every
message stays one short line.

    >>> problems = Problems()
    >>> parse_object('{"id": "a", "id": "b"}', "bench.jsonl:3", problems) is None
    True
    >>> problems.kept
    ['bench.jsonl:3: id: the key appears twice in one object']
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

MiB = 2**20
KEPT_PROBLEMS = 1000  # lines kept; past them a file of a million bad lines is only counted
BOM = b"\xef\xbb\xbf"


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


def open_checked(path: Path, max_bytes: int, what: str) -> IO[bytes] | str:
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


def read_lines(f: IO[bytes], path: Path, max_bytes: int, problems: Problems) -> Iterator[tuple[int, str]]:
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


def parse_object(text: str, where: str, problems: Problems) -> dict[str, Any] | None:
    """The line's JSON object, or None with its problem recorded."""
    if text.lstrip().startswith("\ufeff"):
        problems.append(f"{where}: a byte-order mark (U+FEFF) starts this line; only the file's first line may have one")
        return None
    ok, data = parse_json(text, where, problems)
    if not ok:
        return None
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a JSON object (one task), got {json_kind(data)}")
        return None
    return data


def parse_json(text: str, where: str, problems: Problems) -> tuple[bool, Any]:
    """(True, the value) of strict JSON text (no NaN or Infinity, no key twice in one object),
    or (False, None) with its problem recorded. A position past the first line is given as
    line and column.

    >>> problems = Problems()
    >>> parse_json('[1, 2]', "f.json", problems), parse_json('{\\n "a": NaN}', "f.json", problems)
    ((True, [1, 2]), (False, None))
    >>> problems.kept
    ['f.json: not JSON: NaN is not a JSON value']
    """
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
        at = f"line {e.lineno} column {e.colno}" if e.lineno > 1 else f"column {e.colno}"
        msg = e.msg.removesuffix(" at")  # "Unterminated string starting at"
        problems.append(f"{where}: not JSON: {msg} at {at}")
        return False, None
    except ValueError as e:  # NaN / Infinity, an integer of over 4,300 digits
        problems.append(f"{where}: not JSON: {str(e).split(':')[0]}")
        return False, None
    except RecursionError:
        problems.append(f"{where}: not JSON: nested too deeply")
        return False, None
    if repeated:
        problems.extend(f"{where}: {key_name(k)}: the key appears twice in one object" for k in dict.fromkeys(repeated))
        return False, None
    return True, data


def _size(n: int) -> str:
    """A byte count for a message: "300.0 MiB", "256 MiB", "10 bytes"."""
    if n < MiB:
        return f"{n:,} bytes"
    return f"{n // MiB:,} MiB" if n % MiB == 0 else f"{n / MiB:,.1f} MiB"


def json_kind(value: Any) -> str:
    """How a JSON value is named in a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {show(value)}"
    if isinstance(value, str):
        return f"the string {show(value)}"
    return "a list" if isinstance(value, list) else "an object"


def show(value: Any, width: int = 60) -> str:
    """repr of a value cut to `width`, so a message stays one short line."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def key_name(key: str) -> str:
    """A field name as shown in a message: as it is when it is short and printable."""
    return key if key.isprintable() and len(key) <= 40 and key else show(key, 40)


def records(path: Path, file_bytes: int, line_bytes: int, what: str,
            problems: Problems) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, "FILE:LINE", object) of every line of a JSONL file that is a JSON
    object; an unusable file, an unreadable line or a line that is not an object becomes a
    problem instead (`what` names the file's kind in a message)."""
    opened = open_checked(path, file_bytes, what)
    if isinstance(opened, str):
        problems.append(f"{path}: {opened}")
        return
    with opened as f:
        for n, text in read_lines(f, path, line_bytes, problems):
            where = f"{path}:{n}"
            data = parse_object(text, where, problems)
            if data is not None:
                yield n, where, data
