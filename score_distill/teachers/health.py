"""Whether the teacher's endpoint is down: teacher calls that failed at the endpoint in a row.

A call fails at the endpoint when the HTTP client's own retries ran out (`ModelError`: a
refused connection, timeouts, 5xx, HTML or other garbage, a bad key). That is the server's
fault, not the task's and not ours, so the caller records the task as data (MPS: status
"teacher_failed", reason starting with `UNAVAILABLE`) and goes on with the others. A model
that answers badly (`TeacherFailure`) or well has reached us: the endpoint is up.

`limit` endpoint failures in a row mean the endpoint is down: `TeacherHealth` latches, every
later call raises `TeacherDown` without being made, and the command stops with one line
(rerunning it resumes). `limit=0` never stops. Any other exception is a bug of ours and
passes through untouched.

    health = TeacherHealth(limit=5)
    verdict = health.call(lambda: teacher.judge(task, steps))
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

from score_distill.models.base import ModelError
from score_distill.teachers.llm import TeacherFailure

T = TypeVar("T")
UNAVAILABLE = "teacher_unavailable"


def unreachable(status: str, reason: str | None) -> bool:
    """Whether a recorded task failed because its teacher could not be reached (a rerun
    redoes it), as BC and MPS record it.

    >>> unreachable("teacher_failed", "teacher_unavailable: judge: HTTP 503")
    True
    >>> unreachable("teacher_failed", "judge_failed: the reply was not JSON")
    False
    """
    return status == "teacher_failed" and (reason or "").startswith(UNAVAILABLE + ":")


class TeacherDown(RuntimeError):
    """The teacher's endpoint failed `limit` calls in a row; the run stops (a rerun resumes)."""


class TeacherHealth:
    """Counts endpoint failures in a row across threads (see the module docstring).

    >>> health = TeacherHealth(limit=2)
    >>> def fail(): raise ModelError("HTTP 503:\\n  busy")
    >>> for _ in range(2):
    ...     try:
    ...         health.call(fail)
    ...     except ModelError:
    ...         pass
    >>> health.down, health.describe()
    (True, 'the teacher failed 2 calls in a row at its endpoint (last: HTTP 503: busy)')
    """

    def __init__(self, limit: int):
        if limit < 0:
            raise ValueError(f"the limit of teacher failures in a row must be >= 0, got {limit}")
        self.limit = limit
        self.streak = 0
        self.last = ""
        self._down = False
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        with self._lock:
            return self._down

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()`, counted: `ModelError` adds to the streak and is raised again; an answer
        (a `TeacherFailure` too) ends it. Once down, raises `TeacherDown` without calling."""
        if self.down:
            raise TeacherDown(self.describe())
        try:
            out = fn()
        except ModelError as e:
            with self._lock:
                self.streak += 1
                self.last = " ".join(str(e).split())  # one line, whatever the server sent
                self._down = self._down or (self.limit > 0 and self.streak >= self.limit)
            raise
        except TeacherFailure:
            self._answered()
            raise
        self._answered()
        return out

    def _answered(self) -> None:
        with self._lock:
            if not self._down:
                self.streak = 0

    def describe(self) -> str:
        with self._lock:
            return f"the teacher failed {self.streak} calls in a row at its endpoint (last: {self.last})"
