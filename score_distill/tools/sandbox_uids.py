"""The processes of a sandbox, seen from the parent: list them, kill them, and lease the
per-sandbox uid they run as (when we are root).

    >>> os.geteuid() in busy_uids()  # this very process runs as us
    True
"""

from __future__ import annotations

import fcntl
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

UID_BASE, UID_SLOTS = 2_000_000_000, 1 << 16  # uids no real account uses


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the model's code): it could not start, or lost control."""


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    uid: int  # real uid
    state: str  # R, S, Z, ...
    threads: int


def list_processes() -> list[ProcessInfo]:
    """Every process on the machine that /proc shows us (those that vanish meanwhile skipped)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", encoding="utf-8", errors="replace") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:  # it exited between listdir and open
            continue
        out.append(ProcessInfo(int(name), int(fields["PPid"]), int(fields["Uid"].split()[0]),
                               fields["State"].split()[0], int(fields["Threads"])))
    return out


def busy_uids() -> set[int]:
    """The owners of /proc/<pid>: a quick look (stat only) at which uids have processes. A
    process that made itself undumpable shows as root, so this is for choosing, not killing."""
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                out.add(os.stat(f"/proc/{name}").st_uid)
            except OSError:
                continue
    return out


def kill_uid(uid: int, wait_s: float = 2.0) -> bool:
    """Kill every process of `uid`; False if some still lived after `wait_s`. SIGSTOP comes
    first: a stopped process cannot fork, so a fork bomb cannot refill while we go round.
    Zombies are left to whoever reaps them (see UidLease for why that matters)."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = [p for p in list_processes() if p.uid == uid and p.state not in ("Z", "X")]
        if not alive:
            return True
        if time.monotonic() > deadline:
            return False
        running = [p for p in alive if p.state not in ("T", "t")]
        for p in running or alive:
            signal_process(p.pid, signal.SIGSTOP if running else signal.SIGKILL)
        if not running:
            time.sleep(0.001)


class UidLease:
    """A uid of our own for one sandbox (only when we are root): its process limit is not
    shared with anything else, and every process it owns can be found and killed. Leases are
    `flock`s on files in a root-only directory, so separate programs never share a uid, and a
    crashed owner's lease frees itself. A uid that still owns any process is skipped: even
    zombies count against RLIMIT_NPROC, and an init that does not reap orphans (a container
    whose pid 1 is a plain program) would leave them there for good."""

    def __init__(self) -> None:
        lock_dir = Path(tempfile.gettempdir()) / "score-distill-sandbox-uids"
        lock_dir.mkdir(mode=0o700, exist_ok=True)
        st = lock_dir.stat()
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise SandboxError(f"{lock_dir} must belong to us with mode 0700 (someone else made it?)")
        busy = busy_uids()
        for slot in range(UID_SLOTS):
            if UID_BASE + slot in busy:
                continue
            fd = os.open(lock_dir / str(slot), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._fd, self.uid = fd, UID_BASE + slot
            return
        raise SandboxError(f"all {UID_SLOTS} sandbox uids are in use")

    def clean(self) -> bool:
        """Whether no process (zombies included) runs as this uid."""
        return self.uid not in busy_uids()

    def release(self) -> None:
        """Give the uid back (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def signal_process(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
