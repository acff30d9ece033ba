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

Isolation: "namespaces" (new network, pid and mount namespaces through `unshare`), chosen by
isolation="auto" where it works; else "process", with one warning line saying what is lost.
As root, each sandbox also runs as a uid of its own (2000000000 + slot); without root the
namespaces come from a user namespace (our uid, no capabilities). `Sandbox.isolation` says
which is in use; tests/test_sandbox.py attacks each line below.

    protects against                                 | does not protect against
    -------------------------------------------------|---------------------------------------------
    our secrets: the child's environment is built    | world-readable files: project code, data, a
      from scratch (PATH, LANG, HOME=workdir); our   |   world-readable .env (home directories are
      /proc entries are out of its reach (own pid    |   hidden with namespaces only)
      namespace, or another uid)                     |
    network: seccomp refuses socket() for all but    | unix-domain sockets at paths it may write to
      AF_UNIX (and io_uring); the net namespace has  |   (a world-writable daemon socket)
      only lo, down                                  |
    writes outside its work dir: every mount is      | process mode: world-writable places (/tmp,
      read-only in its namespace, the work dir a     |   /dev/shm) stay writable, and it can see
      private tmpfs; as root, an own uid too         |   (not touch) our processes
    killing or tracing us: own pid namespace, or     | process mode without root: it runs as OUR
      another uid; no_new_privs, no capabilities     |   uid, so it CAN read and write our files,
                                                     |   read our environ and kill our processes
    fork bombs: RLIMIT_NPROC for its uid (or user    | total memory: the limits are per process,
      namespace); after each cell, every other       |   so up to max_processes x memory_mb, plus
      process of the sandbox is killed and reaped    |   the work-dir tmpfs (disk_mb); use a cgroup
    memory bombs: RLIMIT_AS (MemoryError, or death)  |   or container limit for a hard total
    infinite loops: the wall clock (everything of    | CPU: a cell may lift its soft limit, up to
      the sandbox killed), a soft CPU limit per cell |   cpu_total_s (the wall clock still holds)
      and a hard one per interpreter                 | kernel bugs, side channels, kernel-wide
    huge output: streamed; head + tail kept          |   tables (inotify, keyrings) filled up
    crashes (os._exit, segfault, stack overflow):    | process mode without root: processes a cell
      reported; the interpreter rebuilt by replay    |   started are not swept after the cell, and
    a parent killed mid-cell: a watchdog ends the    |   may outlive a parent killed with SIGKILL
      whole sandbox when our end of its pipe closes  |
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from score_distill.config import option
from score_distill.storage import safe_text
from score_distill.tools import sandbox_confine
from score_distill.tools.sandbox_process import (Interpreter, OutputCapture, SandboxError, SandboxStartError,
                                                 cap_output)
from score_distill.tools.sandbox_uids import UidLease, list_processes

__all__ = ["SandboxConfig", "CellResult", "Sandbox", "SandboxError", "run_cells", "cap_output"]
log = logging.getLogger(__name__)

ISOLATIONS = ("auto", "namespaces", "process")


@dataclass
class SandboxConfig:
    timeout_s: float = option(10.0, "wall-clock seconds one cell may run; then its interpreter is killed "
                                    "and rebuilt")
    memory_mb: int = option(1024, "address-space limit (RLIMIT_AS) of each interpreter process, MiB")
    cpu_time_s: float = option(30.0, "CPU seconds one cell may use (a soft limit moved before every cell; "
                                     "then CPUTimeLimitExceeded)")
    cpu_total_s: float = option(600.0, "CPU seconds one interpreter may use over its life (hard limit: it is "
                                       "killed, then rebuilt)")
    max_output_chars: int = option(4000, "output cap: head and tail kept, with a '... [N characters cut] ...' "
                                         "marker between")
    isolation: str = option("auto", "auto | namespaces | process: auto uses namespaces where unshare works, "
                                    "else process")
    max_processes: int = option(32, "processes + threads the sandbox may have at once (RLIMIT_NPROC on its "
                                    "own uid)")
    disk_mb: int = option(64, "size of the private work dir (a tmpfs, with namespaces) and of the largest "
                              "file, MiB")
    site_packages: bool = option(True, "let model code import our installed packages (the site-packages on "
                                       "our sys.path: sympy, numpy); else the standard library only")

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"SandboxConfig.isolation must be one of {ISOLATIONS}, got {self.isolation!r}")
        for name, (kind, low, high, unit) in limit_ranges().items():
            check_limit(f"SandboxConfig.{name}", getattr(self, name), kind, low, high, unit)


DAY_S = 86400.0


def machine_memory_mb() -> int:
    """The machine's physical memory in MiB (never below the default memory_mb, so that the
    default config stays valid on a small machine); a limit above it bounds nothing."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    except (ValueError, OSError):  # not reported here: the largest limit setrlimit takes
        total = (2 ** 63 - 1) >> 20
    return max(int(total), 1024)


def limit_ranges() -> dict[str, tuple[type, float, float, str]]:
    """Field -> (type, exclusive lower bound, inclusive upper bound, unit) of every limit.
    The upper bounds keep each value inside what the kernel and our clocks accept (poll()
    takes int milliseconds, setrlimit a 64-bit count) and inside the machine."""
    ram = machine_memory_mb()
    return {"timeout_s": (float, 0, DAY_S, "seconds"), "cpu_time_s": (float, 0, DAY_S, "seconds"),
            "cpu_total_s": (float, 0, DAY_S, "seconds"),
            "memory_mb": (int, 63, ram, "MiB, the machine's memory"),
            "disk_mb": (int, 0, ram, "MiB, the machine's memory: the work dir is a tmpfs"),
            "max_output_chars": (int, 19, 10 ** 7, "characters"), "max_processes": (int, 3, 65536, "")}


def check_limit(where: str, value: object, kind: type, low: float, high: float, unit: str) -> None:
    """ValueError naming `where` and the accepted range unless `value` is a finite number of
    type `kind` (an int is a float here) with low < value <= high.

    >>> check_limit("timeout_s", float("inf"), float, 0, 86400, "seconds")
    Traceback (most recent call last):
    ...
    ValueError: timeout_s must be more than 0 and at most 86400 (seconds), got inf
    """
    numeric = (int, float) if kind is float else (int,)
    span = f"more than {_number(low)} and at most {_number(high)}" + (f" ({unit})" if unit else "")
    if isinstance(value, bool) or not isinstance(value, numeric):
        raise ValueError(f"{where} must be {'a number' if kind is float else 'an integer'} {span}, got {value!r}")
    if not (math.isfinite(value) and low < value <= high):
        raise ValueError(f"{where} must be {span}, got {value!r}")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass
class CellResult:
    output: str  # captured stdout + stderr, capped (head + tail)
    error: str | None  # "ZeroDivisionError: division by zero" + model-code traceback, or how it died
    timed_out: bool
    final_answer: str | None  # str(x) when the cell called final_answer(x)
    duration_s: float


# Set once isolation="auto" finds namespaces unusable here, so later sandboxes skip the try.
_namespaces_unusable: str | None = None
_fallback_lock = threading.Lock()


def _fall_back(reason: str) -> None:
    global _namespaces_unusable
    with _fallback_lock:
        if _namespaces_unusable is None:
            _namespaces_unusable = reason
            lost = ("the limits and the seccomp network block hold; lost: a private pid "
                    "namespace and a read-only file system, so model code can see other processes "
                    "and write to world-writable places such as /tmp")
            if os.geteuid() != 0:
                lost += ("; and not being root it runs as OUR uid: it can read and write our files "
                         "and signal our processes")
            log.warning("sandbox: Linux namespaces are not usable (%s); using process isolation: %s",
                        reason, lost)


class Sandbox:
    """A persistent Python interpreter for one trajectory (see the module docstring)."""

    def __init__(self, config: SandboxConfig | None = None, search: Callable[[str], str] | None = None) -> None:
        self._closed = False
        self._lock = threading.RLock()  # one cell at a time, whichever thread asks
        self.config = config or SandboxConfig()
        self._search = search
        self._history: list[str] = []
        self._cells = 0  # cells sent to interpreters so far, to name them in tracebacks
        self._interp: Interpreter | None = None
        self._lease: UidLease | None = None
        self._workdir: Path | None = None
        want = self.config.isolation
        self.isolation = "process" if want == "process" or (want == "auto" and _namespaces_unusable) else "namespaces"
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
        outcome = self._interp.run(code, self._cells, self.config.timeout_s, capture, self._search)
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
                outcome = self._interp.run(code, self._cells, self.config.timeout_s, OutputCapture(1), self._search)
                if outcome.died is not None:
                    self._stop()
                    cells = kept + cells[i + 1:]
                    break
                if outcome.error is None:
                    kept.append(code)
            else:
                self._history = kept
                return

    def _start(self) -> None:
        """Start an interpreter with an empty work dir, falling back from namespaces to
        process isolation when isolation="auto" and namespaces do not work here."""
        try:
            self._interp = self._spawn()
        except SandboxStartError as exc:
            if self.config.isolation != "auto" or self.isolation != "namespaces":
                raise
            _fall_back(str(exc))
            self.isolation = "process"
            self._interp = self._spawn()

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
            argv = [unshare, "--net", "--pid", "--mount", "--propagation", "private", "--fork",
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
        paths: list[str] = []
        if c.site_packages:  # ours (a venv's, the user's, the system's), not the project itself
            found = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
            paths = list(dict.fromkeys(found + [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]))
        masks = sorted({"/root", "/home", os.path.expanduser("~")} - {"/"})
        return {"mode": self.isolation, "uid": uid, "workdir": str(self.workdir), "masks": masks,
                "paths": paths, "memory_mb": c.memory_mb, "cpu_time_s": c.cpu_time_s,
                "cpu_total_s": max(c.cpu_total_s, c.cpu_time_s), "nproc": nproc, "disk_mb": c.disk_mb,
                "search": self._search is not None, "seccomp": sandbox_confine.seccomp_supported(),
                "sweep": self.isolation == "namespaces" or uid is not None}


def run_cells(cells: Sequence[str], config: SandboxConfig | None = None,
              search: Callable[[str], str] | None = None) -> list[CellResult]:
    """Run `cells` in order in one throw-away sandbox."""
    with Sandbox(config, search) as sandbox:
        return [sandbox.run(code) for code in cells]
