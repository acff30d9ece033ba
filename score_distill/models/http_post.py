"""One HTTP POST to a model server, bounded in time and size, that keeps credentials at home.

`post(url, payload, headers, deadline, max_bytes)` makes one exchange (following allowed
redirects) and returns its status, headers and body. The rules, and why:

- One deadline for the whole exchange: connecting, sending, the headers and every byte of
  the body must be done by `deadline` (a `time.monotonic()` value). A socket timeout alone
  counts per read, so a server trickling a byte a second never trips it; here a watchdog
  thread shuts the socket down at the deadline, whatever phase the exchange is in, and the
  exchange raises `CallTimeout`.
- A size cap: the body is read in chunks and reading stops once it passes `max_bytes`
  (a declared Content-Length over the cap fails before reading): `ReplyTooLarge`.
- Redirects: a 307 or 308 to the same origin (scheme, host and port) is followed with the
  same POST, at most `MAX_REDIRECTS` times. Every other redirect raises `Redirected`
  without sending anything: one to another origin (the Authorization header must never
  reach a host the user did not name), and a 301/302/303, which would turn the POST into a
  GET. The fix in both cases is to point the base URL at the final address.
- Proxies come from the environment as urllib reads them (`http_proxy`, `https_proxy`,
  `no_proxy`); an https target goes through a CONNECT tunnel, so the proxy sees no headers.
- `redact(text, secrets)` is the one function that removes credentials from a message
  (exact keys and their encodings, fragments of them, `Bearer ...` values, `sk-...` keys,
  `user:password@` in URLs). Callers pass every message that may hold a server's words or
  a URL through it before it is raised or logged.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote, urljoin, urlsplit

MAX_REDIRECTS = 3
CHUNK_BYTES = 64 * 1024
REDACTED = "[redacted]"
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
FRAGMENT_CHARS = 8  # this many characters of a key in a row are treated as the key
_SCHEME_VALUE = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9_.~+/=-]+")
_SK_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}")
_USERINFO = re.compile(r"(?<=//)[^/\s@]+@")


class CallTimeout(TimeoutError):
    """The exchange did not finish by its deadline."""


class ReplyTooLarge(ValueError):
    """The body passed the size cap."""


class Redirected(ValueError):
    """A redirect this client does not follow (see the module docstring)."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` without credentials: each secret (also URL- or JSON-encoded), any run of its
    characters holding 8 of them in a row (a server may echo part of a key, or an excerpt may
    cut one), `Bearer`/`Basic` values, `sk-` keys and URL user info.

    >>> redact("bad key sk-live-0123456789abcdef (Bearer sk-live-0123456789abcdef)", ["sk-live-0123456789abcdef"])
    'bad key [redacted] (Bearer [redacted])'
    >>> redact("Incorrect key abcd1234efgh... provided", ["abcd1234efgh5678ijkl"])
    'Incorrect key [redacted]... provided'
    >>> redact("see http://bob:pw@host/v1 and token=EMPTY", ["EMPTY"])
    'see http://[redacted]@host/v1 and token=[redacted]'
    """
    keys = [s for s in secrets if s]
    for key in keys:
        for form in sorted({key, quote(key, safe=""), json.dumps(key)[1:-1]}, key=len, reverse=True):
            text = text.replace(form, REDACTED)
    for key in keys:
        if len(key) >= FRAGMENT_CHARS:
            runs = re.compile("[" + re.escape("".join(sorted(set(key)))) + "]{%d,}" % FRAGMENT_CHARS)
            text = runs.sub(lambda m: REDACTED if _holds_fragment(m.group(), key) else m.group(), text)
    text = _SCHEME_VALUE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SK_KEY.sub(REDACTED, text)
    return _USERINFO.sub(REDACTED + "@", text)


def _holds_fragment(run: str, key: str) -> bool:
    return any(run[i:i + FRAGMENT_CHARS] in key for i in range(len(run) - FRAGMENT_CHARS + 1))


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; ValueError for anything else.

    >>> origin("http://Example.com/v1"), origin("https://example.com:8443/x")
    (('http', 'example.com', 80), ('https', 'example.com', 8443))
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {redact(url)!r}")
    return parts.scheme, parts.hostname.lower(), parts.port or (443 if parts.scheme == "https" else 80)


def post(url: str, payload: bytes, headers: dict[str, str], deadline: float, max_bytes: int) -> Reply:
    """POST `payload` to `url`; the rules are in the module docstring."""
    for _ in range(MAX_REDIRECTS + 1):
        reply = _exchange(url, payload, headers, deadline, max_bytes)
        if reply.status not in REDIRECT_STATUSES:
            return reply
        target = urljoin(url, reply.headers.get("Location") or "")
        try:
            same = origin(target) == origin(url)
        except ValueError:
            same = False
        shown = target if len(target) <= 200 else target[:200] + "..."
        if not same:
            raise Redirected(f"HTTP {reply.status} redirect to another origin ({shown}) not followed, "
                             "so the API key stays with the host you named; set the base URL to the final address")
        if reply.status not in (307, 308):
            raise Redirected(f"HTTP {reply.status} redirect to {shown} not followed (it would turn the POST "
                             "into a GET); set the base URL to the final address")
        url = target
    raise Redirected(f"more than {MAX_REDIRECTS} redirects, the last to {url}; set the base URL to the final address")


def _exchange(url: str, payload: bytes, headers: dict[str, str], deadline: float, max_bytes: int) -> Reply:
    left = deadline - time.monotonic()
    if left <= 0:
        raise CallTimeout("no time left before the deadline")
    conn, target, extra = _connection(url, left)
    watchdog = _Watchdog(conn, deadline)
    try:
        conn.request("POST", target, body=payload, headers={**headers, **extra})
        resp = conn.getresponse()
        body = _read_body(resp, max_bytes)
    except (OSError, http.client.HTTPException):
        if watchdog.fired:
            raise CallTimeout("the exchange passed its deadline") from None
        raise
    finally:
        watchdog.stop()
        conn.close()
    if watchdog.fired:  # the socket was cut: what was read may be a part of the body
        raise CallTimeout("the exchange passed its deadline")
    return Reply(resp.status, resp.headers, body)


def _read_body(resp: http.client.HTTPResponse, max_bytes: int) -> bytes:
    declared = resp.getheader("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > max_bytes:
        raise ReplyTooLarge(f"the reply declares {int(declared)} bytes, over the cap of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := resp.read(CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise ReplyTooLarge(f"the reply passed the cap of {max_bytes} bytes; reading stopped")
        chunks.append(chunk)
    if resp.length:  # http.client returns a short body when the connection closes early
        raise http.client.IncompleteRead(b"".join(chunks), resp.length)
    return b"".join(chunks)


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
    """The connection for `url` (through a proxy from the environment when one applies),
    the request target, and headers the proxy needs."""
    scheme, host, port = origin(url)
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlsplit(proxy if "//" in proxy else f"http://{proxy}")
        auth = {}
        if p.username:
            pair = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
            auth = {"Proxy-Authorization": "Basic " + base64.b64encode(pair).decode()}
        if scheme == "https":
            conn = http.client.HTTPSConnection(p.hostname or "", p.port or 80, timeout=timeout)
            conn.set_tunnel(host, port, headers=auth)
            return conn, path, {}
        return http.client.HTTPConnection(p.hostname or "", p.port or 80, timeout=timeout), url, auth
    cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    return cls(host, port, timeout=timeout), path, {}


class _Watchdog:
    """Shuts the connection's socket down once the deadline passes, and keeps doing so for
    a socket opened later (a connect or TLS handshake in progress), until stopped."""

    def __init__(self, conn: http.client.HTTPConnection, deadline: float):
        self.conn, self.deadline = conn, deadline
        self.fired = False
        self._stopped = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="http-deadline").start()

    def _watch(self) -> None:
        if self._stopped.wait(max(0.0, self.deadline - time.monotonic())):
            return
        self.fired = True
        while not self._stopped.is_set():
            sock = self.conn.sock
            if sock is not None:
                try:  # the plain socket's shutdown: SSLSocket.shutdown would tear down its state
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed or never connected
            self._stopped.wait(0.05)

    def stop(self) -> None:
        self._stopped.set()
