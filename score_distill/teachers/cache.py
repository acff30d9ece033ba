"""A content-addressed disk cache of teacher calls, so that a rerun costs nothing.

Every chat call a teacher makes is identified by the SHA-256 of what determines its reply:
the prompt template version, the model name, the messages and the sampling options. The
reply (text, tokens, finish reason) is appended to `<directory>/teacher_calls.jsonl`, one
JSON object per line, flushed per line. Reading tolerates a torn last line (the process died
mid-write): the fragment is cut off before anything new is appended, so the file stays
valid JSONL. A malformed line anywhere else raises, since that is corruption, not a crash.
Text is stored and hashed under the rule of `storage.safe_text` (a lone surrogate becomes
U+FFFD), so any reply or message is storable and a key is the same before and after a reload.

    cache = TeacherCache("runs/x/teacher-cache")
    key = call_key(PROMPT_VERSION, "qwen2.5-72b", messages, {"temperature": 0.0})
    hit = cache.get(key)             # None on a miss
    cache.put(key, CachedReply("...", tokens=120))

One process should write a directory at a time (threads are fine: writes are serialised
by a lock). Several processes appending to one file work on local file systems in practice,
since each line goes out in one append-mode write, but nothing here enforces it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from score_distill.storage import dumps, read_log, safe_text

CACHE_SCHEMA = 1
CACHE_FILE = "teacher_calls.jsonl"


class CacheError(RuntimeError):
    """The cache file is corrupt or from another schema version (not a model mistake)."""


@dataclass(frozen=True)
class CachedReply:
    """What a chat call returned: its text, the tokens it cost and why generation ended."""

    text: str
    tokens: int = 0
    finish_reason: str = "stop"


def call_key(version: str, model: str, messages: list[dict[str, str]], options: dict[str, Any]) -> str:
    """The cache key of one chat call: a SHA-256 hex digest of a canonical JSON encoding.

    >>> k = call_key("v1", "m", [{"role": "user", "content": "hi"}], {"temperature": 0.0})
    >>> len(k), k == call_key("v1", "m", [{"role": "user", "content": "hi"}], {"temperature": 0.0})
    (64, True)
    >>> k == call_key("v2", "m", [{"role": "user", "content": "hi"}], {"temperature": 0.0})
    False
    """
    payload = {"version": version, "model": model, "messages": messages, "options": options}
    blob = dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class TeacherCache:
    """Append-only JSONL store of chat replies keyed by `call_key`, loaded into memory."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[str, CachedReply] = {}
        if self.path.exists():
            self._load()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedReply | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, reply: CachedReply) -> None:
        """Record a reply (a key seen before keeps its first reply: replays stay stable). Its
        text is kept as it will read back (`storage.safe_text`)."""
        reply = CachedReply(safe_text(reply.text), reply.tokens, safe_text(reply.finish_reason))
        record = {"schema": CACHE_SCHEMA, "key": key, "text": reply.text, "tokens": reply.tokens,
                  "finish_reason": reply.finish_reason}
        line = dumps(record) + "\n"
        with self._lock:
            if key in self._entries:
                return
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
            self._entries[key] = reply

    def _load(self) -> None:
        try:
            lines = read_log(self.path)
        except UnicodeError as e:
            raise CacheError(str(e)) from None
        for number, line in lines:
            if line.strip():
                self._load_line(line, number)

    def _load_line(self, line: str, number: int) -> None:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CacheError(f"{self.path}:{number}: not JSON ({e})") from None
        if not isinstance(record, dict) or record.get("schema") != CACHE_SCHEMA:
            raise CacheError(f"{self.path}:{number}: not a schema-{CACHE_SCHEMA} cache record")
        try:
            reply = CachedReply(safe_text(str(record["text"])), int(record["tokens"]),
                                safe_text(str(record["finish_reason"])))
            key = str(record["key"])
        except KeyError as e:
            raise CacheError(f"{self.path}:{number}: missing field {e}") from None
        self._entries.setdefault(key, reply)
