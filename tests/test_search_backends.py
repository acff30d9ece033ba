"""The search backends users already run (a Search-R1 retrieval server, Serper, Tavily, Brave,
SearXNG), each against a fake server on 127.0.0.1 that checks the request as the service
documents it (method, path, headers, parameters or JSON body) and answers in its documented
shape. Then the policy they all share: the one cache, retries, refused keys, malformed
replies, and where the key may and may not go."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from score_distill.config import UsageError, apply_overrides
from score_distill.tools.config import ToolConfig
from score_distill.tools.search import HttpSearch, SearchConfig, make_search
from tests import sandbox_fixtures
from tests.sandbox_fixtures import MakeSandbox

make = sandbox_fixtures.make  # the fixture, by its name

KEY = "sk-test-Zq7-never-stored"


@dataclass
class Seen:
    """One request as the fake server received it."""

    method: str
    path: str
    params: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: object  # the decoded JSON body, or None


@dataclass
class Fake:
    """Behaviour of the fake service, changed by each test."""

    answer: Callable[[Seen], dict]  # the documented reply to a request
    seen: list[Seen] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answered first, one per request
    body: bytes | None = None  # a reply to send instead of the documented one
    location: str = ""  # with a 3xx status


def _results(query: str, n: int, title: str = "title", text: str = "content", **extra: str) -> list[dict]:
    return [{title: f"Hit {i} for {query}", text: f"text {i}", **extra} for i in range(n)]


def _check(seen: Seen, method: str, path: str) -> None:
    assert (seen.method, seen.path) == (method, path)
    assert seen.headers["accept"] == "application/json"
    if method == "POST":
        assert seen.headers["content-type"] == "application/json"


# Each backend: how the request must look (asserted) and what the service answers.

def retriever_reply(seen: Seen) -> dict:
    _check(seen, "POST", "/retrieve")
    assert seen.body == {"queries": [seen.body["queries"][0]], "topk": 2, "return_scores": True}  # type: ignore[index]
    assert "authorization" not in seen.headers  # a local server takes no key unless one is named
    query = seen.body["queries"][0]  # type: ignore[index]
    docs = [{"document": {"id": str(i), "contents": f'"Hit {i} for {query}"\ntext {i}'}, "score": 0.9 - i / 10}
            for i in range(5)]
    return {"result": [docs[:seen.body["topk"]]]}  # type: ignore[index]


def serper_reply(seen: Seen) -> dict:
    _check(seen, "POST", "/search")
    assert seen.headers["x-api-key"] == KEY and "authorization" not in seen.headers
    assert seen.body == {"q": seen.body["q"], "num": 2}  # type: ignore[index]
    query = seen.body["q"]  # type: ignore[index]
    return {"searchParameters": {"q": query, "type": "search"},
            "organic": _results(query, 5, text="snippet", link="https://example.org/x")}


def tavily_reply(seen: Seen) -> dict:
    _check(seen, "POST", "/search")
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.body == {"query": seen.body["query"], "max_results": 2}  # type: ignore[index]
    query = seen.body["query"]  # type: ignore[index]
    return {"query": query, "answer": None, "results": _results(query, 2, url="https://example.org/x", score="0.8"),
            "response_time": 0.5}


def brave_reply(seen: Seen) -> dict:
    _check(seen, "GET", "/res/v1/web/search")
    assert seen.headers["x-subscription-token"] == KEY and "authorization" not in seen.headers
    assert set(seen.params) == {"q", "count"} and seen.params["count"] == ["2"] and seen.body is None
    query = seen.params["q"][0]
    return {"type": "search", "query": {"original": query},
            "web": {"type": "search", "results": _results(query, 2, text="description", url="https://example.org/x")}}


def searxng_reply(seen: Seen) -> dict:
    _check(seen, "GET", "/search")
    assert set(seen.params) == {"q", "format"} and seen.params["format"] == ["json"] and seen.body is None
    assert "authorization" not in seen.headers
    query = seen.params["q"][0]
    return {"query": query, "number_of_results": 0, "results": _results(query, 5, url="https://example.org/x",
                                                                          engine="duckduckgo")}


BACKENDS = {"retriever": retriever_reply, "serper": serper_reply, "tavily": tavily_reply, "brave": brave_reply,
            "searxng": searxng_reply}
KEYED = {"serper": "SERPER_API_KEY", "tavily": "TAVILY_API_KEY", "brave": "BRAVE_API_KEY"}
EXPECTED = "[1] Hit 0 for amber weir\ntext 0\n[2] Hit 1 for amber weir\ntext 1"


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[Seen], dict]], tuple[Fake, str]]]:
    """Starts fake services; each returns its state and its base URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Callable[[Seen], dict]) -> tuple[Fake, str]:
        fake = Fake(answer)

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = urlsplit(self.path)
                seen = Seen(self.command, url.path, parse_qs(url.query),
                            {k.lower(): v for k, v in self.headers.items()}, json.loads(raw) if raw else None)
                fake.seen.append(seen)
                status = fake.statuses.pop(0) if fake.statuses else 200
                try:
                    body = fake.body if fake.body is not None else json.dumps(fake.answer(seen)).encode()
                except AssertionError as e:  # a request off the protocol: 400, and the test sees why
                    status, body = 400, str(e).encode()
                    seen.headers["x-protocol-error"] = str(e) or "assertion failed"
                self.send_response(status)
                if fake.location:
                    self.send_header("Location", fake.location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _handle  # noqa: N815 (the stdlib's names)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return fake, f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _config(backend: str, base: str, tmp_path: Path, **kw: object) -> SearchConfig:
    path = {"serper": "/search", "tavily": "/search", "brave": "/res/v1/web/search"}.get(backend, "")
    options: dict = {"backend": backend, "url": base + path, "cache_dir": str(tmp_path / "cache"), "top_k": 2,
                     "timeout_s": 2.0, "retries": 1}
    return SearchConfig(**{**options, **kw})


def _protocol_errors(fake: Fake) -> list[str]:
    return [s.headers["x-protocol-error"] for s in fake.seen if "x-protocol-error" in s.headers]


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in KEYED.values():
        monkeypatch.setenv(env, KEY)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_speaks_its_protocol_and_is_cached(serve, backend: str, tmp_path: Path) -> None:
    fake, base = serve(BACKENDS[backend])
    config = _config(backend, base, tmp_path)
    out = make_search(config)("amber weir")
    assert _protocol_errors(fake) == []
    assert out == EXPECTED
    assert len(fake.seen) == 1
    # A rerun (a fresh callable, as a new process would make) reads the disk cache.
    assert make_search(config)("amber weir") == out
    assert len(fake.seen) == 1
    files = list((tmp_path / "cache").rglob("*"))
    assert files and not any(KEY in f.read_text() or KEY in f.name for f in files if f.is_file())


def test_the_retriever_takes_a_server_address_or_its_endpoint(serve, tmp_path: Path) -> None:
    fake, base = serve(retriever_reply)
    assert make_search(_config("retriever", base, tmp_path))("amber weir") == EXPECTED
    assert make_search(_config("retriever", base + "/retrieve", tmp_path / "b"))("amber weir") == EXPECTED
    assert [s.path for s in fake.seen] == ["/retrieve", "/retrieve"]


def test_retriever_passages_without_a_title_line_and_a_named_key(serve, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fake, base = serve(lambda seen: {"result": [[{"document": {"id": "1", "contents": "just a passage"}}]]})
    monkeypatch.setenv("SD_RETRIEVER_KEY", "r-key")
    out = make_search(_config("retriever", base, tmp_path, api_key_env="SD_RETRIEVER_KEY"))("q")
    assert out == "[1]\njust a passage"
    assert fake.seen[0].headers["authorization"] == "Bearer r-key"


def test_brave_text_loses_its_html_and_an_empty_answer_is_no_results(serve, tmp_path: Path) -> None:
    def reply(seen: Seen) -> dict:
        if seen.params["q"] == ["nothing"]:
            return {"type": "search", "query": {"original": "nothing"}}  # no "web" when nothing matched
        return {"type": "search", "web": {"results": [
            {"title": "The <strong>Amber</strong> Weir", "description": "Kestin&#x27;s <strong>novel</strong>"}]}}

    _, base = serve(reply)
    search = make_search(_config("brave", base, tmp_path))
    assert search("amber") == "[1] The Amber Weir\nKestin's novel"
    assert search("nothing") == "No results for 'nothing'."


def test_the_cache_key_names_the_backend(serve, tmp_path: Path) -> None:
    # One URL, one query, one k: two backends must not answer each other from the cache.
    fake, base = serve(lambda seen: {"searchParameters": {}, "organic": [{"title": "from serper", "snippet": "s"}],
                                     "results": [{"title": "from tavily", "content": "t"}]})
    assert make_search(_config("serper", base, tmp_path))("q").startswith("[1] from serper")
    assert make_search(_config("tavily", base, tmp_path))("q").startswith("[1] from tavily")
    assert len(fake.seen) == 2


@pytest.mark.parametrize("status", [500, 503, 429])
@pytest.mark.parametrize("backend", ["retriever", "serper", "searxng"])
def test_a_passing_failure_is_retried(serve, backend: str, status: int, tmp_path: Path) -> None:
    fake, base = serve(BACKENDS[backend])
    fake.statuses = [status]
    assert make_search(_config(backend, base, tmp_path))("amber weir") == EXPECTED
    assert len(fake.seen) == 2


@pytest.mark.parametrize("backend", KEYED)
def test_a_refused_key_is_not_retried_and_never_shown(serve, backend: str, tmp_path: Path) -> None:
    fake, base = serve(BACKENDS[backend])
    fake.statuses = [401]
    out = make_search(_config(backend, base, tmp_path, retries=3))("amber weir")
    assert out == (f"Error: search failed after 1 attempt(s): HTTP 401 from the search API "
                   f"(was the key in ${KEYED[backend]} refused?).")
    assert len(fake.seen) == 1 and KEY not in out
    assert not (tmp_path / "cache").exists()  # failures are not cached


def test_a_bad_request_is_not_retried(serve, tmp_path: Path) -> None:
    fake, base = serve(searxng_reply)
    fake.statuses = [403]  # SearXNG's answer when json is not among its formats
    out = make_search(_config("searxng", base, tmp_path, retries=3))("x")
    assert "HTTP 403" in out and "search.formats" in out
    assert len(fake.seen) == 1


@pytest.mark.parametrize("backend", KEYED)
def test_a_missing_key_is_one_line_before_any_query(serve, backend: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fake, base = serve(BACKENDS[backend])
    monkeypatch.delenv(KEYED[backend])
    # As a flag: a usage error (one line, exit 2) before any model is loaded.
    with pytest.raises(UsageError, match=f"^{KEYED[backend]} is not set: the {backend} search backend") as e:
        apply_overrides(ToolConfig(), [f"search.backend={backend}"])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=f"^{KEYED[backend]} is not set"):
        make_search(_config(backend, base, tmp_path))
    monkeypatch.setenv("SD_OTHER_KEY", " \n")  # blank counts as missing
    with pytest.raises(ValueError, match="SD_OTHER_KEY is not set"):
        make_search(_config(backend, base, tmp_path, api_key_env="SD_OTHER_KEY"))
    monkeypatch.setenv("SD_OTHER_KEY", "two\nlines")
    with pytest.raises(ValueError, match="cannot carry") as e:
        make_search(_config(backend, base, tmp_path, api_key_env="SD_OTHER_KEY"))
    assert "two" not in str(e.value)
    assert fake.seen == []


def test_a_key_is_sent_without_the_newline_an_env_file_leaves(serve, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fake, base = serve(serper_reply)
    monkeypatch.setenv("SERPER_API_KEY", f" {KEY}\n")
    assert make_search(_config("serper", base, tmp_path))("amber weir") == EXPECTED
    assert fake.seen[0].headers["x-api-key"] == KEY


MALFORMED = {
    "retriever": [b'{"result": []}', b'{"result": [[{"document": {"id": "1"}}]]}', b'{"results": [[]]}'],
    "serper": [b'{"organic": "none"}', b'{"organic": [{"snippet": "no title"}]}', b"{}"],
    "tavily": [b'{"results": {}}', b'{"results": [{"content": "no title"}]}', b"[]"],
    "brave": [b'{"type": "search", "web": {}}', b'{"web": {"results": [{"description": "d"}]}}', b'{"type": "x"}'],
    "searxng": [b'{"results": [7]}', b'<html>not json</html>', b'{"query": "q"}'],
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_replies_are_error_texts(serve, backend: str, tmp_path: Path) -> None:
    fake, base = serve(BACKENDS[backend])
    for i, body in enumerate(MALFORMED[backend]):
        fake.body = body
        out = make_search(_config(backend, base, tmp_path, retries=0))(f"q{i}")
        assert out.startswith("Error: search failed after 1 attempt(s): ") and "search API" in out, (body, out)
    assert not (tmp_path / "cache").exists()


def test_a_redirect_is_not_followed_so_the_key_stays_with_the_endpoint(serve, tmp_path: Path) -> None:
    elsewhere, other = serve(lambda seen: {"organic": []})
    fake, base = serve(serper_reply)
    fake.statuses, fake.location = [302], other + "/collect"
    out = make_search(_config("serper", base, tmp_path, retries=2))("amber weir")
    assert out.startswith("Error: search failed after 1 attempt(s): HTTP 302") and "not followed" in out
    assert elsewhere.seen == []


def test_default_endpoints_and_key_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    expected = {"retriever": ("http://127.0.0.1:8000/retrieve", ""),
                "serper": ("https://google.serper.dev/search", "SERPER_API_KEY"),
                "tavily": ("https://api.tavily.com/search", "TAVILY_API_KEY"),
                "brave": ("https://api.search.brave.com/res/v1/web/search", "BRAVE_API_KEY")}
    for backend, (url, env) in expected.items():
        search = HttpSearch(SearchConfig(backend=backend, cache_dir=str(tmp_path)))
        assert (search.url, search.key_env) == (url, env)
        assert KEY not in repr(search.config)  # the config, saved with every run, names the variable only
    with pytest.raises(ValueError, match="url is required for the searxng backend"):
        make_search(SearchConfig(backend="searxng"))
    with pytest.raises(ValueError, match="bm25, http, retriever, serper, tavily, brave, searxng"):
        SearchConfig(backend="google")


def test_model_code_gets_results_but_not_the_key(serve, make: MakeSandbox, tmp_path: Path) -> None:
    _, base = serve(serper_reply)
    sandbox = make(search=make_search(_config("serper", base, tmp_path)))
    r = sandbox.run("import os\nprint(web_search('amber weir'))\nprint(os.environ.get('SERPER_API_KEY'))")
    assert r.error is None and r.output == EXPECTED + "\nNone\n"
