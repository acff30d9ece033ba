"""The interpreter process behind `score_distill.tools.sandbox.Sandbox`: model code runs here.

`Sandbox` starts `python -S -s -P -B -c LAUNCH TOOLS_DIR SETTINGS_JSON` (see
sandbox_process.LAUNCH; inside `unshare` when namespaces are used), which imports this module
and `sandbox_confine` (with sandbox_view and sandbox_seccomp) from their directory, as
top-level modules, and calls `main`. All use the standard library only: with `-S` neither
site-packages nor the project is importable. First `sandbox_confine.start` confines the
process (a file system of its own, limits, own uid, seccomp); then it serves cells until the
command pipe closes. Once confined, neither this directory nor anything else of our checkout
is reachable: the modules were loaded before. The parent imports this module too, for the
wire format: a 4-byte big-endian length and a UTF-8 JSON object.

    parent -> child  {"op": "run", "code": str, "index": int}
                     {"op": "search_result" | "fetch_result", "text": str} or {..., "error": str}
    child -> parent  {"op": "ready"} | {"op": "setup_error", "message": str}
                     {"op": "search", "query": str} | {"op": "fetch", "url": str}
                     {"op": "done", "error": str | None, "final_answer": str | None}
                     {"op": "exit", "code": int} or {"op": "exit", "signal": int}  (pid 1, below)

stdout and stderr (fds 1 and 2) are one pipe of their own, which the parent reads as it comes.

    >>> frames = bytearray(encode_message({"op": "ready"}) + encode_message({"op": "done"}))
    >>> [m["op"] for m in decode_frames(frames)], len(frames)
    (['ready', 'done'], 0)
"""

from __future__ import annotations

import builtins
import io
import json
import linecache
import math
import os
import resource
import select
import signal
import struct
import sys
import threading
import time
import traceback

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Any

HEADER = struct.Struct(">I")
MAX_MESSAGE_BYTES = 8 << 20
MAX_FINAL_ANSWER_CHARS = 100_000
MAX_QUERY_CHARS = 10_000


class ProtocolError(ValueError):
    """A frame on the wire is not a well-formed message."""


def encode_message(message: dict[str, Any]) -> bytes:
    """One frame: length header + JSON body."""
    body = json.dumps(message).encode("utf-8")
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(body)} bytes is over the {MAX_MESSAGE_BYTES} byte limit")
    return HEADER.pack(len(body)) + body


def decode_frames(buffer: bytearray) -> list[dict[str, Any]]:
    """Remove every complete frame from the front of `buffer` and return their messages;
    a partial frame stays in the buffer until the rest arrives.

    >>> buffer = bytearray(encode_message({"op": "ready"})[:-1])
    >>> decode_frames(buffer), len(buffer)
    ([], 18)
    """
    messages = []
    while len(buffer) >= HEADER.size:
        (size,) = HEADER.unpack_from(buffer)
        if size > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"frame of {size} bytes announced")
        if len(buffer) < HEADER.size + size:
            break
        body = bytes(buffer[HEADER.size:HEADER.size + size])
        del buffer[:HEADER.size + size]
        try:
            message = json.loads(body)
        except ValueError as exc:
            raise ProtocolError(f"frame is not JSON: {exc}") from None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise ProtocolError('message without an "op"')
        messages.append(message)
    return messages


class Channel:
    """The child's blocking ends of the two message pipes."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self._buffer = bytearray()

    def send(self, message: dict[str, Any]) -> None:
        data = memoryview(encode_message(message))
        while data:
            data = data[os.write(self.write_fd, data):]

    def receive(self) -> dict[str, Any] | None:
        """The next message, or None once the parent has closed its end."""
        while True:
            messages = decode_frames(self._buffer)
            if messages:
                if len(messages) > 1:  # the parent sends one message at a time
                    raise ProtocolError("unexpected extra message")
                return messages[0]
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk


# ---------------------------------------------------------------- serving cells


class FinalAnswer(BaseException):
    """Raised by final_answer() to stop the cell; BaseException so `except Exception` in
    model code does not swallow it."""


class CPUTimeLimitExceeded(BaseException):
    """Raised (from SIGXCPU) when a cell used up its CPU time."""


class Session:
    """The interpreter state: the model's globals plus what the tools need."""

    def __init__(self, settings: dict[str, Any], channel: Channel) -> None:
        self.settings, self.channel = settings, channel
        self.main_pid = os.getpid()
        self.in_cell = False
        self.final: str | None = None
        raw = io.BufferedWriter(io.FileIO(1, "w", closefd=False))
        # One stream for stdout and stderr, so prints and warnings keep their order.
        self.stream = io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", line_buffering=True)
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins,
                                          "final_answer": self.final_answer, "web_search": self.web_search,
                                          "fetch_page": self.fetch_page}

    def final_answer(self, answer: object) -> None:
        """Give the final answer; the cell stops here."""
        text = str(answer)
        self.final = text[:MAX_FINAL_ANSWER_CHARS]
        raise FinalAnswer

    def web_search(self, query: str) -> str:
        """Search the documents; returns the top results as text."""
        return self._ask_parent("web_search", "search", "query", query)

    def fetch_page(self, url: str) -> str:
        """The text of a web page (where the task's tools offer it)."""
        return self._ask_parent("fetch_page", "fetch", "url", url)

    def _ask_parent(self, name: str, op: str, field: str, value: str) -> str:
        """One call of a tool our parent process serves (the model never holds its socket,
        key or cache): `op` with `value` as `field` over the pipe, its text back."""
        if not isinstance(value, str):
            raise TypeError(f"{name}({field}): {field} must be a str, not {type(value).__name__}")
        if len(value) > MAX_QUERY_CHARS:
            raise ValueError(f"{name}({field}): {field} is longer than {MAX_QUERY_CHARS} characters")
        if not self.settings.get(op):
            raise RuntimeError(f"{name} is not available: the task's tools do not offer it")
        if os.getpid() != self.main_pid or threading.current_thread() is not threading.main_thread() \
                or not self.in_cell:
            raise RuntimeError(f"{name} can only be called from the main thread of the interpreter")
        # No SIGXCPU exception in the middle of a message: it would garble the pipe.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGXCPU})
        try:
            self.channel.send({"op": op, field: value})
            reply = self.channel.receive()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGXCPU})
        if reply is None:
            os._exit(0)  # the parent is gone
        if reply.get("op") != f"{op}_result":
            raise ProtocolError(f"expected a {op} result, got {reply.get('op')!r}")
        if isinstance(reply.get("error"), str):
            raise RuntimeError(reply["error"])
        return str(reply.get("text", ""))

    def on_cpu_limit(self, signum: int, frame: object) -> None:
        if self.in_cell and os.getpid() == self.main_pid:
            raise CPUTimeLimitExceeded(
                f"the step used more than {self.settings['cpu_time_s']:g} s of CPU time")

    def run(self, code: str, index: int) -> str | None:
        """Run one cell in the persistent globals; the error text, or None."""
        self.final = None
        filename = f"<cell {index}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            compiled = compile(code, filename, "exec", dont_inherit=True)
        except SyntaxError as exc:
            return format_syntax_error(exc)
        sys.stdout = sys.stderr = self.stream
        soft = math.ceil(time.process_time() + self.settings["cpu_time_s"])
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        self.in_cell = True
        try:
            exec(compiled, self.namespace)
        except FinalAnswer:
            pass
        except BaseException as exc:  # noqa: BLE001 - model code may raise anything, SystemExit included
            return format_error(exc, index, self.settings["memory_mb"])
        finally:
            self.in_cell = False
            self.stream.flush()
        return None


def format_syntax_error(exc: SyntaxError) -> str:
    """`SyntaxError: msg (line n)` and the offending line with a caret.

    >>> try:
    ...     compile("x = = 1", "<cell 1>", "exec")
    ... except SyntaxError as e:
    ...     print(format_syntax_error(e))
    SyntaxError: invalid syntax (line 1)
        x = = 1
            ^
    """
    text = f"{type(exc).__name__}: {exc.msg} (line {exc.lineno})"
    if exc.text:
        line = exc.text.rstrip("\n")
        stripped = line.lstrip()
        text += f"\n    {stripped}"
        if exc.offset:
            text += "\n    " + " " * max(0, exc.offset - 1 - (len(line) - len(stripped))) + "^"
    return text


def format_error(exc: BaseException, index: int, memory_mb: int = 0) -> str:
    """The exception line, then the traceback limited to lines of model code (the current
    cell and functions defined in earlier ones). A one-line cell gets no traceback."""
    if isinstance(exc, CPUTimeLimitExceeded):  # ours: no module prefix, like a built-in
        head = f"{type(exc).__name__}: {exc}"
    else:
        head = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if isinstance(exc, MemoryError):
        head += f" (the interpreter may use at most {memory_mb} MB)"
    frames: list[list[Any]] = []  # [line, times in a row]
    for frame in traceback.extract_tb(exc.__traceback__):
        if not frame.filename.startswith("<cell "):
            continue
        here = frame.filename == f"<cell {index}>"
        where = f"line {frame.lineno}" + ("" if here else " of an earlier step")
        if frame.name != "<module>":
            where += f", in {frame.name}"
        line = f"  {where}: {(frame.line or '').strip()}"
        if frames and frames[-1][0] == line:
            frames[-1][1] += 1  # deep recursion: one line and a count, as Python does
        else:
            frames.append([line, 1])
    single = len(frames) == 1 and len(linecache.cache.get(f"<cell {index}>", (0, 0, [""]))[2]) <= 1
    if not frames or single:
        return head
    lines = [line + (f"\n  [the line above repeated {n - 1} more times]" if n > 1 else "") for line, n in frames[-8:]]
    return head + "\nTraceback (most recent call last, model code only):\n" + "\n".join(lines)


def _end_stray_processes(settings: dict[str, Any]) -> None:
    """Kill every other process of the sandbox (its pid namespace, or its uid) and reap them,
    so nothing a cell started outlives the step."""
    if not settings["sweep"]:
        return
    deadline = time.monotonic() + 2.0
    while True:
        try:
            os.kill(-1, signal.SIGKILL)  # every process we may signal, except ourselves
        except ProcessLookupError:
            pass
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)


def _exit_with_parent(fd: int, sweep: bool) -> None:
    """Watchdog thread: poll() for hang-up only (events 0) on the command pipe; the parent
    closing it, or dying, ends the interpreter and what it started, even in mid-cell."""
    poller = select.poll()
    poller.register(fd, 0)
    poller.poll()
    if sweep:
        try:
            os.kill(-1, signal.SIGKILL)  # all other processes of the sandbox (uid or namespace)
        except ProcessLookupError:
            pass
    os._exit(0)


def serve(session: Session) -> None:
    channel = session.channel
    while True:
        message = channel.receive()
        if message is None:
            return
        if message.get("op") != "run" or not isinstance(message.get("code"), str):
            raise ProtocolError(f"expected a run command, got {message.get('op')!r}")
        error = session.run(message["code"], int(message.get("index", 0)))
        if os.getpid() != session.main_pid:
            os._exit(0)  # a fork made by the cell came back here: it must not answer
        _end_stray_processes(session.settings)
        channel.send({"op": "done", "error": error, "final_answer": session.final})


def supervise(worker: int, channel: Channel) -> None:
    """pid 1 of the namespace (with namespaces only): reap orphans, and tell the parent how
    the interpreter ended, since unshare cannot pass on a death by SIGKILL. Keeping model code
    out of pid 1 also gives it ordinary signals (pid 1 ignores the ones it has no handler for).
    It is made undumpable first (`confine.undumpable`), so model code cannot steer it."""
    os.close(channel.read_fd)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == worker:
            break
    if os.WIFSIGNALED(status):
        report = {"op": "exit", "signal": os.WTERMSIG(status)}
    else:
        report = {"op": "exit", "code": os.waitstatus_to_exitcode(status)}
    try:
        channel.send(report)
    except BrokenPipeError:
        pass  # the parent is gone already
    os._exit(0)  # the kernel now ends whatever is left in the namespace


def main(settings_json: str, confine: Any) -> int:
    """The interpreter's life: confine (`confine` is the module sandbox_confine), then serve cells."""
    settings = json.loads(settings_json)
    for fd in (1, 2):  # model output: one pipe for both, read by the parent as it comes
        os.dup2(settings["out_fd"], fd)
    os.close(settings["out_fd"])
    channel = Channel(settings["cmd_fd"], settings["resp_fd"])
    try:
        confine.start(settings)
    except OSError as exc:
        channel.send({"op": "setup_error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    if settings["mode"] == "namespaces":
        worker = os.fork()
        if worker > 0:
            confine.undumpable()
            supervise(worker, channel)
    session = Session(settings, channel)
    signal.signal(signal.SIGXCPU, session.on_cpu_limit)
    threading.Thread(target=_exit_with_parent, args=(channel.read_fd, settings["sweep"]), daemon=True).start()
    channel.send({"op": "ready"})
    serve(session)
    return 0
