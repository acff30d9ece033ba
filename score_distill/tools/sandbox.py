"""The Python sandbox: a persistent interpreter per trajectory, in its own confined process.

Model-written code never runs in our process. Each `Sandbox` owns one long-lived child
interpreter (score_distill/tools/sandbox_child.py) whose globals persist across cells; the
parent sends a cell, streams its output back, and gets its error and final answer.

    with Sandbox(SandboxConfig(timeout_s=5), search=my_search) as sb:
        sb.run("x = 6 * 7")
        r = sb.run("print(x); final_answer(x)")   # r.output == "42\\n", r.final_answer == "42"
    results = run_cells(["a = 1", "print(a + 1)"])  # a throw-away sandbox

A cell that times out or kills its interpreter (os._exit, a segfault, the CPU-time hard
limit) is reported as such; the next cell gets a fresh interpreter rebuilt by replaying the
successful cells so far (`history`; their output is discarded). `replay(cells)` rebuilds any
prefix on purpose: MPS and RL start from prefixes. Inside the interpreter, `final_answer(x)`
stops the cell and reports str(x); `web_search(q)` calls, over the pipe, the `search`
function given to the parent (which may hold an API key the child never sees).

Isolation: "namespaces" (new network, pid, IPC and mount namespaces through `unshare`), chosen by
isolation="auto" where it works; else "process", with a warning line saying why and what is
lost. The fallback is decided per sandbox (sandbox_fallback.py): a start that does not answer
in time is tried once more, and falls back for that sandbox only; a cause that holds for the
process (no unshare program, unshare refused by the kernel) is remembered, so later sandboxes
do not try again. isolation="namespaces" never falls back: it raises. `Sandbox.isolation` says
which is in use, `Sandbox.fallback` why it is not namespaces (None: no fallback); the rollout
writes both into each trajectory's meta["sandbox"], and metrics.json and report.md count them.
As root, each sandbox also runs as a uid of its own (2000000000 + slot); without root the
namespaces come from a user namespace (our uid, no capabilities). tests/test_sandbox.py
attacks each line below. Limits out of range are refused before anything starts
(SandboxConfig, in sandbox_config.py; the ranges in sandbox_limits.py).

    protects against                                 | does not protect against
    -------------------------------------------------|---------------------------------------------
    reading the answers: it imports the standard     | process mode: sys.path is as strict, but a
      library and the allow-list (`packages`: numpy, |   file it may read by path stays readable
      sympy, mpmath by default), never our package;  |   (our checkout, run dirs, caches; adding
      with namespaces it sees a root of its own,     |   our checkout to sys.path imports our
      read-only: the system's /usr and /lib, a few   |   package); as root its own uid keeps
      /etc files, the interpreter and its standard   |   0700 directories (/root) closed
      library, the allow-listed packages alone, and  | with namespaces: what it sees of /usr, /lib
      its work dir; no checkout, run dir, task file, |   and those /etc files (sandbox_paths.py),
      cache, home, /tmp or /work of the host         |   world-readable in any case
    our secrets: the child's environment is built    |
      from scratch (PATH, LANG, HOME=workdir); our   |
      /proc entries are out of its reach (own pid    |
      namespace, or another uid)                     |
    network: seccomp refuses socket() for all but    | process mode: unix-domain sockets at paths
      AF_UNIX (and io_uring); the net namespace has  |   it may write to (a world-writable daemon
      only lo, down                                  |   socket)
    writes outside its work dir: the work dir and    | process mode: world-writable places (/tmp,
      /dev/shm are its only writable places (with    |   /dev/shm) stay writable, and it can see
      namespaces); as root, an own uid too           |   (not touch) our processes
    killing or tracing us or its own processes: own  | process mode without root: it runs as OUR
      pid namespace, or another uid; no_new_privs,   |   uid, so it CAN read and write our files,
      no capabilities; seccomp refuses ptrace,       |   read our environ and kill our processes
      process_vm_*, new namespaces (a user namespace |
      above all), mounts, keyrings, bpf, perf, user- |
      faultfd, modules (sandbox_seccomp.py lists     |
      all); its pid 1 is undumpable                  |
    IPC: its own IPC namespace (System V IPC and     | process mode: POSIX shared memory (files in
      POSIX queues go with it, unseen by others);    |   the host's /dev/shm) outlives it
      process mode refuses System V IPC and queues   |
    fork bombs: RLIMIT_NPROC for its uid (or user    | total memory: the address-space limit is per
      namespace); after each cell, every other       |   process, so up to max_processes x memory_mb;
      process of the sandbox is killed and reaped    |   with namespaces plus disk_mb of files (work
    memory bombs: RLIMIT_AS (MemoryError, or death); |   dir + /dev/shm) and disk_mb of System V
      memfd_create refused; with namespaces, files   |   shared memory; plus what it makes the kernel
      of the work dir and /dev/shm share one tmpfs   |   hold (pipe and socket buffers, page tables,
      of disk_mb, System V shared memory is capped   |   256 KiB of System V messages, 800 KiB of
      at disk_mb                                     |   POSIX queues); process mode: files in the
                                                     |   host's /dev/shm, unbounded. No cgroup is
                                                     |   made: run the whole job in one (or in a
                                                     |   container) for a hard total
    infinite loops: the wall clock (everything of    | CPU: a cell may lift its soft limit, up to
      the sandbox killed), a soft CPU limit per cell |   cpu_total_s (the wall clock still holds)
      and a hard one per interpreter                 | kernel bugs, side channels, kernel-wide
    huge output: streamed; head + tail kept          |   tables (inotify watches) filled up
    crashes (os._exit, segfault, stack overflow):    | process mode without root: processes a cell
      reported; the interpreter rebuilt by replay    |   started are not swept after the cell, and
    a parent killed mid-cell: a watchdog ends the    |   may outlive a parent killed with SIGKILL
      whole sandbox when our end of its pipe closes  |
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from score_distill.storage import safe_text
from score_distill.tools import sandbox_confine, sandbox_paths
from score_distill.tools.sandbox_config import SandboxConfig
from score_distill.tools.sandbox_fallback import fall_back, fallback_cause, remembered_cause
from score_distill.tools.sandbox_process import (Interpreter, OutputCapture, SandboxError, SandboxStartError,
                                                 cap_output)
from score_distill.tools.sandbox_uids import UidLease, list_processes

__all__ = ["SandboxConfig", "CellResult", "Sandbox", "SandboxError", "run_cells", "cap_output"]
log = logging.getLogger(__name__)

@dataclass
class CellResult:
    output: str  # captured stdout + stderr, capped (head + tail)
    error: str | None  # "ZeroDivisionError: division by zero" + model-code traceback, or how it died
    timed_out: bool
    final_answer: str | None  # str(x) when the cell called final_answer(x)
    duration_s: float


class Sandbox:
    """A persistent Python interpreter for one trajectory (see the module docstring)."""

    def __init__(self, config: SandboxConfig | None = None, search: Callable[[str], str] | None = None,
                 fetch: Callable[[str], str] | None = None) -> None:
        self._closed = False
        self._lock = threading.RLock()  # one cell at a time, whichever thread asks
        self.config = config or SandboxConfig()
        self._search = search
        self._fetch = fetch
        self._history: list[str] = []
        self._cells = 0  # cells sent to interpreters so far, to name them in tracebacks
        self._interp: Interpreter | None = None
        self._lease: UidLease | None = None
        self._workdir: Path | None = None
        want = self.config.isolation
        # Why this sandbox runs with process isolation although isolation="auto" asked for
        # namespaces (None: it did not fall back); set with `isolation`, never cleared.
        self.fallback: str | None = remembered_cause() if want == "auto" else None
        self.isolation = "process" if want == "process" or self.fallback else "namespaces"
        try:
            self._lease = UidLease() if os.geteuid() == 0 else None
            self._workdir = Path(tempfile.mkdtemp(prefix="score-distill-sandbox-"))
            self._start()
        except BaseException:
            self.close()
            raise

    @property
    def history(self) -> list[str]:
        """The cells that ran without error so far: what a rebuild replays."""
        return list(self._history)

    @property
    def uid(self) -> int | None:
        """The uid model code runs as (None: ours, when we are not root)."""
        return self._lease.uid if self._lease is not None else None

    @property
    def pid(self) -> int | None:
        """The process we started for the interpreter (unshare's, with namespaces); None
        while no interpreter runs (after a timeout or crash, until the next cell)."""
        return self._interp.proc.pid if self._interp is not None else None

    @property
    def workdir(self) -> Path:
        """The interpreter's working directory (with namespaces, a tmpfs only it can see)."""
        if self._workdir is None:
            raise SandboxError("the sandbox is closed")
        return self._workdir

    def run(self, code: str) -> CellResult:
        """Run one cell in the persistent interpreter."""
        with self._lock:
            return self._run(code)

    def _run(self, code: str) -> CellResult:
        if self._closed:
            raise SandboxError("run() on a closed sandbox")
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        code = safe_text(code)  # a lone surrogate cannot be compiled; the cell runs what is recorded
        if self._interp is not None and not self._interp.alive():
            self._stop()  # killed between cells (e.g. a background thread of the model): rebuild
        if self._interp is None:
            self._rebuild()
        assert self._interp is not None
        capture = OutputCapture(self.config.max_output_chars)
        self._cells += 1
        started = time.monotonic()
        outcome = self._interp.run(code, self._cells, self.config.timeout_s, capture, self._search, self._fetch)
        duration = time.monotonic() - started
        # Model text is data: what the cell returned is kept as it will be stored (storage.safe_text).
        error = None if outcome.error is None else safe_text(outcome.error)
        if outcome.died is not None:
            self._interp.close()
            self._interp = None  # the next run() rebuilds it
            error = f"the step timed out after {self.config.timeout_s:g} s" if outcome.timed_out else outcome.died
        elif error is None:
            self._history.append(code)
        if error is not None:
            error = cap_output(error, self.config.max_output_chars)
        final = None if outcome.final_answer is None else safe_text(outcome.final_answer)
        return CellResult(output=capture.text(), error=error, timed_out=outcome.timed_out,
                          final_answer=final, duration_s=duration)

    def replay(self, cells: Sequence[str]) -> list[CellResult]:
        """A fresh interpreter, then `cells` in order: the state of a prefix, with results."""
        with self._lock:
            self.reset()
            return [self._run(code) for code in cells]

    def reset(self) -> None:
        """A fresh, empty interpreter (history cleared)."""
        with self._lock:
            if self._closed:
                raise SandboxError("reset() on a closed sandbox")
            self._history = []
            self._stop()
            self._start()

    def close(self) -> None:
        """Kill the interpreter and everything it started; remove the work dir. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop()
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
            if self._lease is not None:
                self._lease.release()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._closed:  # a safety net for sandboxes nobody closed
            self.close()

    def _stop(self) -> None:
        if self._interp is not None:
            self._interp.close()
            self._interp = None

    def _rebuild(self) -> None:
        """A fresh interpreter holding the state of `history`, replayed quietly. A cell that
        fails on replay (it was not deterministic) leaves the history; one that kills the
        interpreter starts the rebuild over without it."""
        cells = list(self._history)
        while True:
            self._start()
            assert self._interp is not None
            kept: list[str] = []
            for i, code in enumerate(cells):
                self._cells += 1
                outcome = self._interp.run(code, self._cells, self.config.timeout_s, OutputCapture(1), self._search,
                                           self._fetch)
                if outcome.died is not None:
                    self._stop()
                    cells = kept + cells[i + 1:]
                    break
                if outcome.error is None:
                    kept.append(code)
            else:
                self._history = kept
                return

    @property
    def isolation_record(self) -> dict[str, str | None]:
        """What a trajectory record says of its sandbox: the isolation used, and why it fell
        back (None when it did not)."""
        return {"isolation": self.isolation, "fallback": self.fallback}

    def _start(self) -> None:
        """Start an interpreter with an empty work dir. With isolation="auto", a namespaces
        start that fails moves this sandbox to process isolation, for a cause recorded in
        `fallback`; when process isolation fails too, the cause was not the namespaces and
        the error says both."""
        try:
            self._interp = self._spawn_retrying()
        except SandboxStartError as exc:
            if self.config.isolation != "auto" or self.isolation != "namespaces":
                raise
            cause, permanent = fallback_cause(exc)
            self.isolation = "process"
            try:
                self._interp = self._spawn_retrying()
            except SandboxStartError as again:
                raise SandboxStartError(f"{again} (with namespaces first: {cause})") from exc
            self.fallback = cause
            fall_back(cause, permanent)

    def _spawn_retrying(self) -> Interpreter:
        """`_spawn`, tried once more after a start that did not answer in time: a loaded
        machine is slow, which says nothing about the isolation."""
        try:
            return self._spawn()
        except SandboxStartError as exc:
            if not exc.transient:
                raise
            log.warning("sandbox: an interpreter start (%s isolation) failed: %s; trying once more",
                        self.isolation, exc)
            return self._spawn()

    def _spawn(self) -> Interpreter:
        workdir = self.workdir
        if self._lease is not None and self.isolation == "process" and not self._lease.clean():
            # Orphans of the last interpreter, not reaped yet, would eat its process limit.
            self._lease.release()
            self._lease = UidLease()
        if self.isolation == "process":  # with namespaces the work dir is a fresh tmpfs anyway
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(mode=0o700, exist_ok=True)
            if self.uid is not None:
                os.chown(workdir, self.uid, self.uid)
        argv = [sys.executable]
        if self.isolation == "namespaces":
            unshare = shutil.which("unshare")
            if unshare is None:
                raise SandboxStartError("the unshare program (util-linux) is not installed")
            user = ["--user", "--map-root-user"] if os.geteuid() != 0 else []
            argv = [unshare, "--net", "--pid", "--ipc", "--mount", "--propagation", "private", "--fork",
                    "--kill-child", "--mount-proc", *user, *argv]
        return Interpreter(argv, self._environment(), self._settings(), self.uid, self.isolation == "namespaces")

    def _environment(self) -> dict[str, str]:
        """Built from nothing: no variable of ours (API keys, tokens) reaches model code."""
        home = str(self.workdir)
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home,
                # a fixed hash seed makes replays print sets in the same order
                "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1"}

    def _settings(self) -> dict[str, object]:
        c, uid = self.config, self.uid
        nproc = c.max_processes
        if uid is None and self.isolation == "process":
            # RLIMIT_NPROC counts every process of the uid, and here that uid is ours.
            nproc += sum(p.threads for p in list_processes() if p.uid == os.getuid())
        names = tuple(c.packages)
        namespaces = self.isolation == "namespaces"
        view = {"expose": sandbox_paths.exposed(names), "hide": sandbox_paths.hidden()} if namespaces else {}
        return {"mode": self.isolation, "uid": uid, "workdir": str(self.workdir), **view,
                "packages": sandbox_paths.package_dirs(names), "deny_ipc": not namespaces,
                "memory_mb": c.memory_mb, "cpu_time_s": c.cpu_time_s,
                "cpu_total_s": max(c.cpu_total_s, c.cpu_time_s), "nproc": nproc, "disk_mb": c.disk_mb,
                "search": self._search is not None, "fetch": self._fetch is not None,
                "seccomp": sandbox_confine.seccomp_supported(),
                "sweep": self.isolation == "namespaces" or uid is not None}


def run_cells(cells: Sequence[str], config: SandboxConfig | None = None,
              search: Callable[[str], str] | None = None, fetch: Callable[[str], str] | None = None) -> list[CellResult]:
    """Run `cells` in order in one throw-away sandbox."""
    with Sandbox(config, search, fetch) as sandbox:
        return [sandbox.run(code) for code in cells]
