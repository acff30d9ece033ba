"""The `fetch_page(url)` tool: the text of a web page, for the benchmarks that browse
(WebWalkerQA, GAIA). Off unless `tools.fetch.enabled`.

The model's code asks for a URL over the sandbox's pipe; our process fetches it and hands
back text, so model code never holds a socket, our environment or any key. The URL is the
model's, so it is hostile: only http and https, no credentials in it, and every address its
host resolves to must be a public one (no loopback, private, link-local or reserved ranges:
the machine's own services and a cloud's metadata endpoint stay out of reach) unless the host
is named in `allow_hosts` (a local mirror of the pages). The connection goes to the address
that was checked, not to a second lookup of the name. Redirects are followed a few times,
each target checked the same way. The body is read up to `max_bytes`; HTML becomes text
(scripts and styles dropped, blocks on their own lines), plain text and JSON are returned as
they are, anything else is refused with its content type; the result is cut to `max_chars`.
Pages are cached on disk by URL, so a rerun or an evaluation sees the same text. A failure is
an error text the model reads (`Error: ...`), never a crash of ours.

    fetch = make_fetch(FetchConfig(enabled=True))
    fetch("https://en.wikipedia.org/wiki/Ada_Lovelace")  # "Title: Ada Lovelace - Wikipedia\\nURL: ...\\n\\n..."
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import logging
import re
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable

from score_distill.config import option
from score_distill.storage import atomic_write_json, safe_text

MAX_URL_CHARS = 2000
MAX_REDIRECTS = 5
TEXT_TYPES = ("text/html", "application/xhtml+xml", "text/plain", "application/json", "text/markdown")
log = logging.getLogger(__name__)


@dataclass
class FetchConfig:
    enabled: bool = option(False, "offer fetch_page(url) to the model: a web page's text, fetched by our process "
                                  "(the browsing benchmarks: WebWalkerQA, GAIA)")
    max_chars: int = option(6000, "characters of a page's text returned (the rest is cut, and the cut is said)")
    max_bytes: int = option(3_000_000, "largest body read")
    timeout_s: float = option(15.0, "seconds to connect and read one page")
    allow_hosts: list = option([], "hosts fetched although they resolve to a private, loopback or link-local "
                                   "address (a local mirror of the pages); any other such address is refused")
    cache_dir: str = option(".cache/fetch", "directory of fetched pages, keyed by URL")
    user_agent: str = option("score-distill-fetch/0.1 (+research agent evaluation)", "the User-Agent header sent")


class FetchError(RuntimeError):
    """A page that could not be fetched or read, said in one line the model sees."""


def make_fetch(config: FetchConfig) -> Callable[[str], str]:
    """The `fetch_page(url) -> str` callable for `config` (see the module docstring)."""

    def fetch_page(url: str) -> str:
        if not isinstance(url, str):
            return f"Error: fetch_page expects a URL string, got {type(url).__name__}."
        try:
            return _cached(config, url.strip())
        except FetchError as exc:
            return f"Error: fetch_page({url.strip()[:200]!r}): {exc}"

    return fetch_page


def _cached(config: FetchConfig, url: str) -> str:
    path = Path(config.cache_dir) / f"{hashlib.sha256(url.encode('utf-8', 'replace')).hexdigest()}.json"
    if path.is_file():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("url") == url and isinstance(record.get("text"), str):
                return record["text"]
        except (OSError, ValueError):
            pass  # a damaged entry is fetched again
    text = page_text(config, url)
    atomic_write_json(path, {"url": url, "text": text})
    return text


def check_url(url: str, allow_hosts: list[str] | tuple[str, ...] = ()) -> tuple[urllib.parse.SplitResult, str]:
    """The parts of `url` and the public address to connect to; `FetchError` when the URL is
    not one we fetch.

    >>> check_url("file:///etc/passwd")[0]
    Traceback (most recent call last):
    ...
    score_distill.tools.fetch.FetchError: only http and https URLs are fetched, not 'file'
    >>> check_url("http://127.0.0.1:8080/admin")[0]
    Traceback (most recent call last):
    ...
    score_distill.tools.fetch.FetchError: 127.0.0.1 is not a public address (loopback, private, link-local or reserved)
    """
    if len(url) > MAX_URL_CHARS:
        raise FetchError(f"the URL is longer than {MAX_URL_CHARS} characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"only http and https URLs are fetched, not {parts.scheme or 'a relative URL'!r}")
    if parts.username is not None or parts.password is not None:
        raise FetchError("a URL with credentials in it is not fetched")
    host = parts.hostname
    if not host:
        raise FetchError("the URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise FetchError("the URL's port is not a number in range") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"{host} does not resolve ({exc})") from None
    addresses = [info[4][0] for info in infos]
    if host not in allow_hosts:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_global or ip.is_multicast:
                raise FetchError(f"{host} is not a public address (loopback, private, link-local or reserved)")
    return parts, addresses[0]


def _connection(parts: urllib.parse.SplitResult, address: str, timeout: float) -> http.client.HTTPConnection:
    """A connection to `address` (the checked one) that speaks to the URL's host: its Host
    header and, over TLS, its certificate name."""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(parts.hostname, port, timeout=timeout,
                                                                        context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
    conn._create_connection = lambda _addr, *args, **kw: socket.create_connection((address, port), *args, **kw)  # type: ignore[attr-defined]
    return conn


def page_text(config: FetchConfig, url: str) -> str:
    """Fetch `url` (following up to MAX_REDIRECTS redirects, each checked) and return its
    text as the model reads it."""
    seen = url
    for _ in range(MAX_REDIRECTS + 1):
        parts, address = check_url(seen, tuple(config.allow_hosts))
        conn = _connection(parts, address, config.timeout_s)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        try:
            conn.request("GET", target, headers={"User-Agent": config.user_agent, "Accept": "text/html, text/plain",
                                                 "Accept-Encoding": "identity"})
            reply = conn.getresponse()
            if reply.status in (301, 302, 303, 307, 308):
                location = reply.getheader("Location")
                if not location:
                    raise FetchError(f"HTTP {reply.status} without a Location")
                seen = urllib.parse.urljoin(seen, location)
                continue
            if reply.status != 200:
                raise FetchError(f"HTTP {reply.status} {reply.reason}")
            kind, charset = content_type(reply.getheader("Content-Type", ""))
            if kind not in TEXT_TYPES:
                raise FetchError(f"the page is {kind or 'of no stated type'}, not text")
            body = reply.read(config.max_bytes + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"{type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        cut = len(body) > config.max_bytes
        raw = body[: config.max_bytes].decode(charset or "utf-8", errors="replace")
        title, text = html_text(raw) if "html" in kind else ("", raw)
        text = safe_text(text)
        if len(text) > config.max_chars or cut:
            text = text[: config.max_chars] + f"\n[... cut: the page is longer than {config.max_chars} characters]"
        head = f"Title: {title}\n" if title else ""
        return f"{head}URL: {seen}\n\n{text}"
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def content_type(header: str) -> tuple[str, str | None]:
    """(media type, charset) of a Content-Type header.

    >>> content_type("text/HTML; charset=ISO-8859-1")
    ('text/html', 'iso-8859-1')
    """
    kind, _, params = header.partition(";")
    found = re.search(r"charset=\"?([\w.:-]+)", params, re.I)
    charset = found.group(1).lower() if found else None
    try:
        if charset:
            "".encode(charset)
    except LookupError:
        charset = None
    return kind.strip().lower(), charset


BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "table",
          "ul", "ol", "header", "footer", "blockquote", "pre", "dd", "dt", "hr"}
SKIPPED = {"script", "style", "noscript", "template", "svg", "head"}


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.skip = 0
        self.in_title = False

    def handle_starttag(self, tag, attrs):  # noqa: ANN001, ANN201
        if tag == "title":
            self.in_title = True
        elif tag in SKIPPED:
            self.skip += 1
        elif tag in BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):  # noqa: ANN001, ANN201
        if tag == "title":
            self.in_title = False
        elif tag in SKIPPED:
            self.skip = max(0, self.skip - 1)
        elif tag in BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):  # noqa: ANN001, ANN201
        if self.in_title:
            self.title.append(data)
        elif not self.skip:
            self.parts.append(data)


def html_text(html: str) -> tuple[str, str]:
    """(title, text) of an HTML page: scripts, styles and the head dropped, block elements on
    lines of their own, runs of spaces and blank lines collapsed.

    >>> html_text("<html><head><title>Ada</title><style>p{}</style></head><body><p>Born  1815.</p>"
    ...           "<script>x()</script><p>Died 1852.</p></body></html>")
    ('Ada', 'Born 1815.\\nDied 1852.')
    """
    parser = _Text()
    parser.feed(html)
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    return " ".join("".join(parser.title).split()), "\n".join(line for line in lines if line)
