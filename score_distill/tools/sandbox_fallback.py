"""Why isolation="auto" falls back from namespaces to process isolation, and what it remembers.

`Sandbox._start` (score_distill/tools/sandbox.py) tries namespaces first; when that start
fails, `fallback_cause` names the cause on one line and says whether it holds for the whole
process, and `fall_back` logs the warning (what is lost) and remembers a process-wide cause.
The sandbox keeps its cause on `Sandbox.fallback`, and the rollout in each trajectory's meta.
Only such a cause (no unshare program; the kernel refuses the namespaces) is remembered, so
that later sandboxes skip the try (`remembered_cause`); any other failure, a slow start above
all, moves one sandbox only, and the next one tries namespaces again.

    >>> fallback_cause(SandboxStartError("the unshare program (util-linux) is not installed"))
    ('the unshare program (util-linux) is not installed', True)
"""

from __future__ import annotations

import logging
import os
import threading

from score_distill.tools.sandbox_process import SandboxStartError

# The warning keeps the logger it had inside sandbox.py, so a filter set on that logger holds.
log = logging.getLogger("score_distill.tools.sandbox")

# The cause that holds for the whole process, once one is seen (None: namespaces may work).
_namespaces_unusable: str | None = None
_fallback_lock = threading.Lock()


def remembered_cause() -> str | None:
    """The process-wide cause seen so far (None: none yet, so a sandbox tries namespaces)."""
    return _namespaces_unusable


def fallback_cause(exc: SandboxStartError) -> tuple[str, bool]:
    """Why a namespaces start failed, on one line, and whether that holds for the process.

    >>> fallback_cause(SandboxStartError("the interpreter exited with code 1; it printed: "
    ...                                  "unshare: unshare failed: Operation not permitted"))
    ('unshare is not permitted here (unshare: unshare failed: Operation not permitted)', True)
    >>> fallback_cause(SandboxStartError("no answer in 60 s", transient=True))
    ('the start timed out twice (no answer in 60 s)', False)
    """
    text = str(exc)
    line = next((part for part in text.splitlines() if "unshare failed" in part), "")
    if "unshare program" in text:
        cause, permanent = text, True
    elif line:  # unshare's own complaint, before any interpreter ran: the kernel said no
        cause, permanent = f"unshare is not permitted here ({line[line.index('unshare'):].strip()})", True
    elif exc.transient:
        cause, permanent = f"the start timed out twice ({text})", False
    else:
        cause, permanent = f"the namespaces start failed ({text})", False
    cause = " ".join(cause.split())
    return (cause if len(cause) <= 300 else cause[:297] + "..."), permanent


def fall_back(cause: str, permanent: bool) -> None:
    """Log a fallback (a remembered cause once per process) and remember a permanent cause."""
    global _namespaces_unusable
    with _fallback_lock:
        if permanent and _namespaces_unusable is not None:
            return  # said already
        if permanent:
            _namespaces_unusable = cause
    lost = ("the limits and the seccomp filter hold; lost: private pid and IPC namespaces and "
            "a file system of its own, so model code can see other processes, read by path what "
            "its uid may read (our checkout, run directories, caches: the answers) and write to "
            "world-writable places such as /tmp")
    if os.geteuid() != 0:
        lost += ("; and not being root it runs as OUR uid: it can read and write our files "
                 "and signal our processes")
    scope = "every sandbox of this process" if permanent else "this sandbox only; the next one tries namespaces"
    log.warning("sandbox: Linux namespaces are not usable (%s); using process isolation for %s: %s",
                cause, scope, lost)
