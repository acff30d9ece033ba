"""The fetch_page tool: pages from a local server (allowed by name, as a mirror would be),
HTML made text, redirects followed and checked, what is refused (other schemes,
credentials, private and loopback addresses, non-text bodies), the cache, and the tool
called by model code inside the sandbox, listed in the prompt only when it is on."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from score_distill.agent.format import FETCH_LINE, SYSTEM_PROMPT
from score_distill.agent.rollout import Episode, RolloutConfig, rollout
from score_distill.models.scripted import ScriptedModel
from score_distill.tools.config import ToolConfig
from score_distill.tools.fetch import FetchConfig, check_url, make_fetch
from score_distill.tools.sandbox import Sandbox, SandboxConfig
from score_distill.types import Task

PAGE = ("<html><head><title>Ada Lovelace</title><style>p {color: red}</style></head><body>"
        "<h1>Ada Lovelace</h1><p>Born in  London, 1815.</p><script>steal()</script><p>Caf\u00e9 &amp; notes</p>"
        "</body></html>")


class Pages(BaseHTTPRequestHandler):
    routes = {
        "/page.html": (200, "text/html; charset=utf-8", PAGE.encode()),
        "/plain.txt": (200, "text/plain", "line one\nline two".encode()),
        "/latin1.html": (200, "text/html; charset=iso-8859-1", "<p>na\u00efve</p>".encode("latin-1")),
        "/image.png": (200, "image/png", b"\x89PNG\r\n"),
        "/big.txt": (200, "text/plain", b"x" * 50_000),
    }
    redirects = {"/moved": "/page.html", "/loop": "/loop", "/inside": "http://10.0.0.1/admin"}
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        type(self).hits.append(self.path)
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.end_headers()
            return
        status, kind, body = self.routes.get(self.path, (404, "text/plain", b"not here"))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Pages.hits = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def config(tmp_path):
    return FetchConfig(enabled=True, allow_hosts=["127.0.0.1"], cache_dir=str(tmp_path / "cache"), max_chars=200,
                       max_bytes=10_000, timeout_s=5.0)


def test_a_page_becomes_its_text(server, config):
    text = make_fetch(config)(f"{server}/page.html")
    assert text.startswith(f"Title: Ada Lovelace\nURL: {server}/page.html\n\n")
    assert "Born in London, 1815.\nCaf\u00e9 & notes" in text
    assert "steal" not in text and "color" not in text


@pytest.mark.parametrize("path, expected", [
    ("/plain.txt", "line one\nline two"),
    ("/latin1.html", "na\u00efve"),
    ("/moved", "Born in London"),  # a redirect followed
    ("/image.png", "Error: fetch_page('/image.png'): the page is image/png, not text"),
    ("/nowhere", "HTTP 404"),
    ("/loop", "more than 5 redirects"),
    ("/inside", "10.0.0.1 is not a public address"),  # a redirect into the private network
])
def test_what_comes_back(server, config, path, expected):
    text = make_fetch(config)(f"{server}{path}")
    assert expected.replace("'/image.png'", repr(f"{server}/image.png")) in text


def test_a_long_page_is_cut_and_says_so(server, config):
    text = make_fetch(config)(f"{server}/big.txt")
    assert "x" * 200 in text and "x" * 201 not in text and "[... cut: the page is longer than 200 characters]" in text


@pytest.mark.parametrize("url, message", [
    ("file:///etc/passwd", "only http and https URLs are fetched, not 'file'"),
    ("ftp://example.org/x", "not 'ftp'"),
    ("http://user:secret@example.org/", "a URL with credentials in it is not fetched"),
    ("http://127.0.0.1:9/", "127.0.0.1 is not a public address"),
    ("http://localhost:9/", "localhost is not a public address"),
    ("http://[::1]:9/", "::1 is not a public address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is not a public address"),
    ("http://10.1.2.3/", "10.1.2.3 is not a public address"),
    ("/relative/path", "not 'a relative URL'"),
])
def test_urls_that_are_refused_without_a_request(url, message, tmp_path):
    fetch = make_fetch(FetchConfig(enabled=True, cache_dir=str(tmp_path)))
    assert message in fetch(url) and fetch(url).startswith("Error: ")


def test_only_named_hosts_may_be_private(server):
    with pytest.raises(Exception, match="not a public address"):
        check_url(f"{server}/page.html")
    assert check_url(f"{server}/page.html", ["127.0.0.1"])[1] == "127.0.0.1"


def test_pages_are_cached_by_url(server, config):
    fetch = make_fetch(config)
    first = fetch(f"{server}/page.html")
    assert fetch(f"{server}/page.html") == first and Pages.hits == ["/page.html"]


def test_model_code_calls_it_in_the_sandbox_and_only_where_it_is_offered(server, config):
    with Sandbox(SandboxConfig(timeout_s=10), fetch=make_fetch(config)) as sandbox:
        result = sandbox.run(f"page = fetch_page({f'{server}/page.html'!r})\nprint(page.splitlines()[0])")
        assert result.error is None and result.output.strip() == "Title: Ada Lovelace"
        bad = sandbox.run("fetch_page(42)")
        assert "TypeError" in bad.error
    with Sandbox(SandboxConfig(timeout_s=10)) as sandbox:
        result = sandbox.run(f"fetch_page({f'{server}/page.html'!r})")
        assert "fetch_page is not available" in result.error


def test_the_prompt_lists_fetch_page_only_when_the_tools_offer_it(server, config, tmp_path):
    seen = []

    def policy(messages):
        seen.append(messages[0]["content"])
        return "<thought>t</thought>\n<code>\nfinal_answer(1)\n</code>"

    task = Task(id="t", question="q?", answer="1", suite="math")
    rollout_config = RolloutConfig(max_turns=2, batch_size=1)
    for enabled in (False, True):
        tools = ToolConfig(sandbox=SandboxConfig(timeout_s=5), fetch=FetchConfig(enabled=enabled,
                                                                                cache_dir=str(tmp_path)))
        rollout(ScriptedModel(policy), [Episode(task, prefix=[])], tools, rollout_config)
    assert seen[0] == SYSTEM_PROMPT and FETCH_LINE not in seen[0]
    assert FETCH_LINE in seen[-1] and seen[-1].replace(FETCH_LINE + "\n", "") == SYSTEM_PROMPT
