"""A tiny OpenAI-compatible chat server on 127.0.0.1 for offline tests.

The test gives a Python function that sees each request (the parsed JSON body of
`POST /v1/chat/completions`) and returns the reply. Every request is counted and kept, so
a test can check how many calls were made and what the model was shown.

    from tests.fake_teacher_server import FakeServer, FakeReply, last_user
    def reply(request: dict) -> str | FakeReply:
        return '{"equivalent": true, "reason": "same"}'
    with FakeServer(reply) as server:
        client = OpenAIModel(base_url=server.url, model="fake")   # server.url ends in /v1
        ...
    assert server.hits == 1

What the reply function can return:
- a string: a normal reply (HTTP 200) with that text as the assistant message;
- `FakeReply(text, ...)` for everything else:
  - `status=500` (or any code): an error response with an OpenAI-style error body;
  - `delay_s=2.0`: sleep before answering (to trigger the client's timeout);
  - `finish_reason="length"`: report a reply cut by the token cap;
  - `prompt_tokens=`/`completion_tokens=`: the usage to report (default: word counts);
  - `body="not json"`: send this raw body with the status as is (a broken server);
  - `headers={"Location": ...}`: extra response headers (a redirect);
  - `trickle_s=0.2`: send the body 16 bytes at a time, this long apart (a trickling server);
  - `hang=True`: never answer (until the server stops);
  - `close_delimited=True`: no Content-Length; the body ends when the connection closes.
If the function raises, the server answers 500 with the exception text.
Every request, on any path and with any method, has its path and headers kept in `seen`.

Like OpenAI, the server honours the request's `stop` strings: the text is cut before the
first one and the finish reason is "stop" (pass `honour_stop=False` to send text as is).
`script(*replies)` builds a reply function that plays replies in order, repeating the last.
`GET /v1/models` lists one model, "fake".
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class FakeReply:
    text: str = ""
    status: int = 200
    delay_s: float = 0.0
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    body: str | None = None
    headers: dict[str, str] | None = None
    trickle_s: float = 0.0
    hang: bool = False
    close_delimited: bool = False


ReplyFn = Callable[[dict[str, Any]], "str | FakeReply"]


def script(*replies: str | FakeReply) -> ReplyFn:
    """A reply function that returns `replies` in order, then keeps repeating the last one."""
    if not replies:
        raise ValueError("script() needs at least one reply")
    state = {"i": 0}
    lock = threading.Lock()

    def reply(_: dict[str, Any]) -> str | FakeReply:
        with lock:
            i = min(state["i"], len(replies) - 1)
            state["i"] += 1
        return replies[i]

    return reply


def last_user(request: dict[str, Any]) -> str:
    """The content of the last user message of a request."""
    return next(m["content"] for m in reversed(request["messages"]) if m["role"] == "user")


def system(request: dict[str, Any]) -> str:
    """The content of the system message of a request ("" if none)."""
    return next((m["content"] for m in request["messages"] if m["role"] == "system"), "")


def all_text(request: dict[str, Any]) -> str:
    """Every message of a request joined, to check what the model was shown."""
    return "\n".join(m["content"] for m in request["messages"])


def _apply_stop(text: str, stop: Any) -> tuple[str, bool]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cuts = [text.find(s) for s in stops if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _completion(request: dict[str, Any], reply: FakeReply, honour_stop: bool) -> dict[str, Any]:
    text, finish = reply.text, reply.finish_reason
    if honour_stop:
        text, stopped = _apply_stop(text, request.get("stop"))
        finish = "stop" if stopped else finish
    prompt = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))
    prompt = reply.prompt_tokens if reply.prompt_tokens is not None else prompt
    completion = reply.completion_tokens if reply.completion_tokens is not None else len(text.split())
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
        "model": request.get("model", "fake"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


class FakeServer:
    """The server (see the module docstring). Use as a context manager, or start()/stop()."""

    def __init__(self, reply: ReplyFn, honour_stop: bool = True):
        self.reply = reply
        self.honour_stop = honour_stop
        self.requests: list[dict[str, Any]] = []
        self.seen: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers) of every request
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        # A short poll interval makes stop() quick (shutdown waits for the next poll).
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def hits(self) -> int:
        """Chat requests received so far (failed ones included)."""
        with self._lock:
            return len(self.requests)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}/v1"

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # hanging handlers give up
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answer(self, request: dict[str, Any]) -> tuple[str, FakeReply]:
        """(body, how to send it) for one chat request."""
        with self._lock:
            self.requests.append(request)
        try:
            out = self.reply(request)
        except Exception as e:  # the test's reply function failed: answer like a broken server
            return json.dumps({"error": {"message": f"reply function raised {e!r}"}}), FakeReply(status=500)
        reply = FakeReply(text=out) if isinstance(out, str) else out
        if reply.body is not None:
            return reply.body, reply
        if reply.status != 200:
            return json.dumps({"error": {"message": f"fake error {reply.status}"}}), reply
        return json.dumps(_completion(request, reply, self.honour_stop)), reply

    def _saw(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.seen.append((handler.command, handler.path, dict(handler.headers)))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                server._saw(self)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}))
                    return
                length = int(self.headers.get("Content-Length", "0"))
                try:
                    request = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    self._send(400, json.dumps({"error": {"message": "body is not JSON"}}))
                    return
                body, reply = server._answer(request)
                if reply.hang:
                    server._stopping.wait()
                    self.close_connection = True
                    return
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                self._send(reply.status, body, reply)

            def do_GET(self) -> None:
                server._saw(self)
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}))
                else:
                    self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}))

            def _send(self, status: int, body: str, reply: FakeReply | None = None) -> None:
                data = body.encode("utf-8")
                reply = reply or FakeReply()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    for name, value in (reply.headers or {}).items():
                        self.send_header(name, value)
                    if reply.close_delimited:
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if not reply.trickle_s:
                        self.wfile.write(data)
                    for i in range(0, len(data) if reply.trickle_s else 0, 16):
                        self.wfile.write(data[i:i + 16])
                        self.wfile.flush()
                        if server._stopping.wait(reply.trickle_s):
                            return
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout) before the slow reply came

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests read hits and requests instead of a log."""

        return Handler
