"""One sandbox interpreter process, seen from the parent: start it, run a cell, kill it.

`Sandbox` (score_distill/tools/sandbox.py) owns the policy (history, replay, timeouts as
results); this module owns the mechanics: the three pipes to the child (commands, replies,
output), the wait for a reply under a deadline while output streams in, the search call-back,
and the end of every process the interpreter started (with sandbox_uids.py).

    >>> capture = OutputCapture(8)
    >>> capture.feed("héllo wörld, ".encode() + b"bye")
    >>> capture.text()
    'héll\\n... [8 characters cut] ...\\n bye'
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from score_distill.tools.sandbox_child import ProtocolError, decode_frames, encode_message
from score_distill.tools.sandbox_uids import SandboxError, busy_uids, kill_uid, list_processes, signal_process

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60.0  # generous: 64 interpreters starting at once on two cores take a while
# The interpreter's command line after `python -S -s -P -B -c`: import the two child modules
# from their directory (argv[1]) as top-level modules, so their cached bytecode is used, and
# leave that directory off sys.path again before any model code runs.
LAUNCH = ("import sys; sys.path.insert(0, sys.argv[1]); import sandbox_child, sandbox_confine; "
          "del sys.path[0]; sys.exit(sandbox_child.main(sys.argv[2], sandbox_confine))")
CHILD_DIR = str(Path(__file__).parent)


def cap_output(text: str, max_chars: int) -> str:
    """Keep the head and the tail of `text`, `max_chars` characters in all, with a marker.

    >>> cap_output("0123456789", 4)
    '01\\n... [6 characters cut] ...\\n89'
    >>> cap_output("short", 10)
    'short'
    """
    capture = OutputCapture(max_chars)
    capture.feed(text.encode("utf-8"))
    return capture.text()


class OutputCapture:
    """Streamed output, kept as a head and a tail so memory stays bounded whatever comes."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._head, self._tail, self.total = "", "", 0

    def feed(self, data: bytes, final: bool = False) -> None:
        piece = self._decoder.decode(data, final)
        self.total += len(piece)
        if len(self._head) < self.max_chars:
            self._head += piece[: self.max_chars - len(self._head)]
        self._tail = (self._tail + piece)[-self.max_chars:]

    def text(self) -> str:
        self.feed(b"", final=True)
        if self.total <= self.max_chars:
            return self._head
        head = self._head[: self.max_chars // 2]
        tail = self._tail[len(self._tail) - (self.max_chars - len(head)):]
        return f"{head}\n... [{self.total - len(head) - len(tail)} characters cut] ...\n{tail}"


class SandboxStartError(SandboxError):
    """The interpreter process could not be started with the requested isolation.
    `transient`: it did not answer in time, which a loaded machine explains as well as a
    broken isolation, so trying again may work."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# ---------------------------------------------------------------- one interpreter


@dataclass
class Outcome:
    """What became of one cell, before `Sandbox` turns it into a CellResult."""

    error: str | None = None
    final_answer: str | None = None
    timed_out: bool = False
    died: str | None = None  # why the interpreter is gone, when it is


class Interpreter:
    """A started child interpreter. `argv` is the command up to the Python executable
    (`unshare ...` with namespaces: the interpreter is then its child, as `namespaces` says)."""

    def __init__(self, argv: list[str], env: dict[str, str], settings: dict[str, Any],
                 uid: int | None, namespaces: bool) -> None:
        self.uid, self.namespaces = uid, namespaces
        self._broken: str | None = None  # set when the child sent garbage
        self._exit_report: dict[str, Any] | None = None  # how pid 1 saw the interpreter end
        cmd_r, self._cmd_w = os.pipe()
        self._resp_r, resp_w = os.pipe()
        self._out_r, out_w = os.pipe()
        # unshare's and Python's start-up complaints go to a pipe of their own, read only when
        # the start fails; the interpreter moves the output pipe onto its fds 1 and 2 itself.
        self._err_r, err_w = os.pipe()
        settings = dict(settings, cmd_fd=cmd_r, resp_fd=resp_w, out_fd=out_w)
        try:
            self.proc = subprocess.Popen(
                argv + ["-S", "-s", "-P", "-B", "-c", LAUNCH, CHILD_DIR, json.dumps(settings)],
                stdin=subprocess.DEVNULL, stdout=err_w, stderr=err_w,
                pass_fds=(cmd_r, resp_w, out_w), env=env, cwd="/", start_new_session=True)
        except OSError:
            for fd in (self._cmd_w, self._resp_r, self._out_r, self._err_r):
                os.close(fd)
            raise
        finally:
            for fd in (cmd_r, resp_w, out_w, err_w):
                os.close(fd)
        os.set_blocking(self._err_r, False)
        for fd in (self._cmd_w, self._resp_r, self._out_r):
            os.set_blocking(fd, False)
        self._poller = select.poll()
        for fd in (self._resp_r, self._out_r):
            self._poller.register(fd, select.POLLIN)
        self._frames: list[dict[str, Any]] = []
        self._buffer = bytearray()
        self._resp_open = self._out_open = True
        self._wait_ready()

    def _wait_ready(self) -> None:
        capture = OutputCapture(2000)
        message = self._next_message(time.monotonic() + STARTUP_TIMEOUT_S, capture)
        if isinstance(message, dict) and message["op"] == "ready":
            return
        if isinstance(message, dict) and message["op"] == "setup_error":
            detail = str(message.get("message"))
        elif message == "timeout":
            detail = f"no answer in {STARTUP_TIMEOUT_S:g} s"
        else:
            detail = self._death(capture)
        try:
            output = os.read(self._err_r, 4000).decode("utf-8", "replace").strip() + capture.text().strip()
        except BlockingIOError:
            output = capture.text().strip()
        self.close()
        raise SandboxStartError(detail + (f"; it printed: {output}" if output else ""), transient=message == "timeout")

    def run(self, code: str, index: int, timeout_s: float, capture: OutputCapture,
            search: Callable[[str], str] | None, fetch: Callable[[str], str] | None = None) -> Outcome:
        """Run one cell; output goes into `capture` as it comes."""
        self._drain_output(capture)  # what background threads printed since the last cell
        deadline = time.monotonic() + timeout_s
        status = self._send({"op": "run", "code": code, "index": index}, deadline)
        while status == "ok":
            message = self._next_message(deadline, capture)
            if isinstance(message, str):
                status = message
                break
            if message["op"] == "exit":  # from pid 1 of the namespace: the interpreter is gone
                self._exit_report = message
                status = "closed"
                break
            if message["op"] in ("search", "fetch"):
                started = time.monotonic()
                reply = _call_tool(search, "web_search", message.get("query"), "search_result") \
                    if message["op"] == "search" else _call_tool(fetch, "fetch_page", message.get("url"), "fetch_result")
                deadline += time.monotonic() - started  # the clock is for model code, not for our tools
                status = self._send(reply, deadline)
                continue
            error, final = message.get("error"), message.get("final_answer")
            if message["op"] != "done" or not isinstance(error, (str, type(None))) \
                    or not isinstance(final, (str, type(None))):
                self._broken = f"unexpected message {message['op']!r}"
                break
            self._drain_output(capture)
            return Outcome(error=error, final_answer=final)
        if self._broken is not None:
            self.kill()
            self._drain_output(capture)
            return Outcome(died=f"the interpreter broke the sandbox protocol ({self._broken})")
        if status == "timeout":
            self.kill()
            self._drain_output(capture)
            return Outcome(timed_out=True, died="timed out")
        return Outcome(died=self._death(capture))

    def _death(self, capture: OutputCapture) -> str:
        """Describe how the child ended (its reply pipe closed): exit code or signal."""
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        self.kill()  # whatever it left behind (and the child itself, if it hung on)
        self._drain_output(capture)
        report = self._exit_report
        if report is not None and isinstance(report.get("signal"), int):
            return describe_exit(-report["signal"])
        if report is not None and isinstance(report.get("code"), int):
            return describe_exit(report["code"])
        return describe_exit(self.proc.returncode)

    def _send(self, message: dict[str, Any], deadline: float) -> str:
        """Write one message: "ok", or "timeout" / "closed" when that was not possible."""
        data = memoryview(encode_message(message))
        while data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            if not select.select([], [self._cmd_w], [], remaining)[1]:
                continue
            try:
                data = data[os.write(self._cmd_w, data):]
            except BrokenPipeError:
                return "closed"
        return "ok"

    def _next_message(self, deadline: float, capture: OutputCapture) -> dict[str, Any] | str:
        """The next reply, or "timeout" / "closed"; output read meanwhile goes to `capture`."""
        while not self._frames:
            if not self._resp_open or self._broken is not None:
                return "closed"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            for fd, _ in self._poller.poll(max(1, int(remaining * 1000))):
                if fd == self._out_r:
                    self._read_output(capture, limit=1 << 20)
                else:
                    self._read_replies()
        return self._frames.pop(0)

    def _read_replies(self) -> None:
        try:
            chunk = os.read(self._resp_r, 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            self._resp_open = False
            self._poller.unregister(self._resp_r)
            return
        self._buffer += chunk
        try:
            self._frames += decode_frames(self._buffer)
        except ProtocolError as exc:
            self._broken = str(exc)

    def _read_output(self, capture: OutputCapture, limit: int) -> None:
        read = 0
        while self._out_open and read < limit:
            try:
                chunk = os.read(self._out_r, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                self._out_open = False
                self._poller.unregister(self._out_r)
                return
            capture.feed(chunk)
            read += len(chunk)

    def _drain_output(self, capture: OutputCapture) -> None:
        """Read what is waiting in the output pipe (64 KiB at most, unless more is being
        written right now: a thread printing forever must not keep us here)."""
        self._read_output(capture, limit=1 << 20)

    def alive(self) -> bool:
        """Whether it can still take a cell (something may have killed it between cells)."""
        return self.proc.poll() is None and self._resp_open and self._broken is None

    def kill(self) -> None:
        """End the interpreter and everything it started, and reap it."""
        if self.proc.returncode is None:
            if self.namespaces:
                # unshare's child is the namespace's init: when it dies the kernel kills every
                # process in the namespace, and unshare reaps it and exits. As root, init is
                # one of the sandbox uid's processes; otherwise find it by its parent.
                if self.uid is not None:
                    kill_uid(self.uid)
                else:
                    for p in list_processes():
                        if p.ppid == self.proc.pid:
                            signal_process(p.pid, signal.SIGKILL)
                try:
                    self.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
            signal_process(-self.proc.pid, signal.SIGKILL)  # its process group (unshare, or the interpreter)
            self.proc.wait()
        if not self.namespaces and self.uid is not None and not kill_uid(self.uid):
            log.warning("sandbox: processes of uid %d survived SIGKILL", self.uid)

    def close(self) -> None:
        """Ask the interpreter to exit (close its command pipe), make sure, free the pipes."""
        if self._cmd_w >= 0:
            os.close(self._cmd_w)
            self._cmd_w = -1
        # Its reply pipe closes when the interpreter (and unshare) are gone: wait for that on
        # the pipe, since Popen.wait(timeout) polls with sleeps of up to 50 ms.
        deadline = time.monotonic() + 1.0
        while self._resp_open and self._broken is None and time.monotonic() < deadline:
            self._frames.clear()
            self._next_message(deadline, OutputCapture(1))
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.returncode is None:
            self.kill()
        elif not self.namespaces and self.uid is not None and self.uid in busy_uids():
            # Its last cell ended every process of the uid (kill(-1)); a quick look is enough
            # to catch what a thread of the model started after that.
            kill_uid(self.uid)
        for fd in (self._resp_r, self._out_r, self._err_r):
            if fd >= 0:
                os.close(fd)
        self._resp_r = self._out_r = self._err_r = -1


def describe_exit(code: int) -> str:
    """An exit status (negative: killed by that signal) in words.

    >>> describe_exit(-11)
    'the interpreter died (signal 11, SIGSEGV)'
    """
    if code >= 0:
        return f"the interpreter exited with code {code}"
    name = signal.Signals(-code).name if -code in signal.valid_signals() else "?"
    hint = " (killed: out of memory or CPU time?)" if -code == signal.SIGKILL else ""
    return f"the interpreter died (signal {-code}, {name}){hint}"


def _call_tool(tool: Callable[[str], str] | None, name: str, arg: object, reply_op: str) -> dict[str, Any]:
    """Run one of the parent's tools (`web_search`, `fetch_page`) for the child; a failure
    becomes the model's error text."""
    if tool is None or not isinstance(arg, str):
        return {"op": reply_op, "error": f"{name} is not available"}
    try:
        text = tool(arg)
        if not isinstance(text, str):
            raise TypeError(f"the {name} backend returned {type(text).__name__}, not str")
    except Exception as exc:  # noqa: BLE001 - any backend failure is reported to the model
        log.warning("sandbox: %s(%r) failed: %s: %s", name, arg[:200], type(exc).__name__, exc)
        return {"op": reply_op, "error": f"{name} failed: {type(exc).__name__}: {exc}"}
    return {"op": reply_op, "text": text}
