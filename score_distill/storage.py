"""How outputs reach the disk: text that is always storable, rewrites that are atomic, and
JSONL lines read back safely after a crash.

Text is data. A string from a model, a tool or a server may hold any code point, including
lone surrogates (U+D800-U+DFFF, e.g. from `bytes.decode(..., "surrogateescape")` or a JSON
`"\\udcff"` escape), which UTF-8 cannot encode. The rule, applied by `safe_text`: a surrogate
pair written as two code points is joined into the character it encodes, and a lone
surrogate becomes U+FFFD (the replacement character). Every other code point (NUL, U+FFFF,
direction marks, combining characters) is kept as it is. Every JSON record, cache line and
export goes through `dumps`, every hash key is computed over cleaned text, and text is also
cleaned where it enters a run (records parsed from JSON, sandbox results, model turns,
teacher replies, search results), so what a run holds in memory is what it writes.

    >>> safe_text("a\\udcffb") == "a\\ufffdb", safe_text("\\ud83d\\ude00") == "\\U0001f600"
    (True, True)
    >>> dumps({"answer": "\\ud800"}) == '{"answer": "\\ufffd"}'
    True

Writes that replace a file (`atomic_write_text`, `atomic_write_lines`, `atomic_write_json`,
`atomic_path`) go to a temporary file in the same directory, are flushed and fsynced, then
renamed over the target (`os.replace`) and the directory is fsynced: killed at any moment,
the target holds either its old content or its new content, never a part; a directory
(a checkpoint) is written whole beside its target and renamed into place (`atomic_dir`).
Appends (the record logs, the teacher cache) stay appends, one line per write, and are read
back by `read_log`, which cuts the torn last line a killed writer leaves before the next
append; `split_jsonl` is the line splitting every JSONL reader shares.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

_counter = itertools.count()


def safe_text(text: str) -> str:
    """`text` with surrogate pairs joined and lone surrogates replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        # UTF-16 with surrogatepass turns a pair into its character when decoded; a lone
        # surrogate does not decode and becomes one U+FFFD.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def safe_data(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, tuples, strings, scalars) with every string, keys
    included, passed through `safe_text`; other values are returned as they are."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {safe_data(k): safe_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe_data(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps(value, ensure_ascii=False, **kwargs)` of cleaned text: the result always
    encodes to UTF-8."""
    text = json.dumps(value, ensure_ascii=False, **kwargs)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # rare: clean only when needed (cleaning walks every string)
        return json.dumps(safe_data(value), ensure_ascii=False, **kwargs)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write the new file into; when the block ends, the
    file is fsynced and renamed over `path`. If the block raises, `path` is left untouched
    and the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process, thread and call: threads may rewrite the same file at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}-{next(_counter)}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A fresh temporary directory beside `path` to write a whole directory into (a model
    checkpoint); when the block ends it takes `path`'s place, so a reader finds the old
    directory or the new one, never half of one. If the block raises, `path` is untouched."""
    path = Path(path)
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)


def read_log(path: str | Path) -> list[tuple[int, str]]:
    """The complete lines of an append-only JSONL log, as (line number, text), after cutting
    a torn last line off the file (its writer died mid-line; torn anywhere, even inside a
    character): the next append must not glue onto it. A complete line that is not UTF-8
    raises `UnicodeError` naming the file and line."""
    path = Path(path)
    data = path.read_bytes()
    lines, tail = split_jsonl(data, str(path))
    if tail:
        os.truncate(path, len(data) - len(tail))
    return lines


def atomic_write_lines(path: str | Path, lines: Iterable[str]) -> int:
    """Replace `path` with `lines` (each written with a newline after it); returns how many."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write(safe_text(line) + "\n")
            n += 1
    return n


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8; lone surrogates replaced, see `safe_text`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(safe_text(text).encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """Replace `path` with `data` as JSON (see `dumps`) and a final newline."""
    atomic_write_text(path, dumps(data, indent=indent) + "\n")


def split_jsonl(data: bytes, where: str) -> tuple[list[tuple[int, str]], bytes]:
    """The complete lines of `data` as (line number, text), and the unterminated tail (empty
    when `data` ends with a newline). The tail is bytes: a writer that died mid-line may have
    torn it anywhere, even inside a character. A complete line that is not UTF-8 raises
    `UnicodeError` naming `where` and the line.

    >>> split_jsonl('{"a": 1}\\n{"b": "é'.encode()[:-1], "f")
    ([(1, '{"a": 1}')], b'{"b": "\\xc3')
    """
    *complete, tail = data.split(b"\n")
    lines = []
    for number, raw in enumerate(complete, start=1):
        try:
            lines.append((number, raw.decode("utf-8")))
        except UnicodeDecodeError as e:
            raise UnicodeError(f"{where}:{number}: not UTF-8 text (byte {e.start + 1} of the line: {e.reason})") from None
    return lines, tail
