"""Tests of the web_search tool: BM25 over a corpus file and the generated world, and the
HTTP adapter against a small server on 127.0.0.1 (delays, 500s, malformed JSON, disk cache)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlparse

import pytest

from score_distill.config import apply_overrides
from score_distill.tools.search import (HttpSearch, SearchConfig, SearchError, bm25_index, format_results,
                                        make_search)

DOCS = [
    {"id": "a", "title": "Velora Kestin", "text": "Velora Kestin is a novelist born in 1962 in Tarsholm."},
    {"id": "b", "title": "The Amber Weir", "text": "'The Amber Weir' is a novel by Velora Kestin."},
    {"id": "c", "title": "Tarsholm", "text": "Tarsholm is a city in Velmaria."},
    {"id": "d", "title": "Velmaria", "text": "Velmaria is a country whose capital is Tarsholm."},
]


@pytest.fixture
def corpus_file(tmp_path: Path) -> str:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return str(path)


def test_bm25_ranks_the_named_document_first(corpus_file: str) -> None:
    search = make_search(SearchConfig(corpus=corpus_file, top_k=2))
    out = search("Tarsholm")
    assert out.startswith("[1] Tarsholm\nTarsholm is a city in Velmaria.")
    assert out.count("\n[") == 1  # top_k = 2 results
    assert make_search(SearchConfig(corpus=corpus_file))("amber weir author").startswith("[1] The Amber Weir")


def test_bm25_no_match_and_bad_queries_are_text(corpus_file: str) -> None:
    search = make_search(SearchConfig(corpus=corpus_file))
    assert search("zzzz qqqq") == "No results for 'zzzz qqqq'."
    assert search("   ").startswith("Error: web_search got an empty query")
    assert search(42).startswith("Error: web_search expects a text query")  # type: ignore[arg-type]
    assert search("Tarsholm " * 500).startswith("Error: the query is 4500 characters long")


def test_bm25_index_is_built_once_per_corpus(corpus_file: str) -> None:
    assert bm25_index(corpus_file) is bm25_index(corpus_file)
    assert bm25_index("embedded:0") is bm25_index("embedded:0")
    assert bm25_index("embedded:0") is not bm25_index("embedded:1")


def test_bad_corpus_specs_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        make_search(SearchConfig(corpus=str(tmp_path / "missing.jsonl")))
    with pytest.raises(ValueError, match="embedded"):
        make_search(SearchConfig(corpus="embedded:abc"))
    with pytest.raises(ValueError, match="corpus is required"):
        make_search(SearchConfig())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "body": "x"}\n')
    with pytest.raises(ValueError, match="title"):
        make_search(SearchConfig(corpus=str(bad)))
    with pytest.raises(ValueError, match="backend"):
        SearchConfig(backend="grep")


def test_embedded_world_search_and_config_overrides() -> None:
    config = apply_overrides(SearchConfig(), ["corpus=embedded:0", "top_k=1", "snippet_chars=40"])
    out = make_search(config)("Tarsholm Velmaria capital")
    assert out.startswith("[1] ") and "\n[2]" not in out
    assert len(out.split("\n")[1]) <= 44  # snippet cut at a word, then " ..."


def test_format_results_numbers_and_truncates() -> None:
    text = format_results("q", [("A", "one two three four"), ("B", "x\n  y")], snippet_chars=9)
    assert text == "[1] A\none two ...\n[2] B\nx y"


# ---- the HTTP adapter


class _Api:
    """Behaviour of the fake search API, changed by each test."""

    def __init__(self) -> None:
        self.hits: list[dict] = []
        self.fail_first = 0       # answer 500 to this many requests first
        self.status = 200
        self.delay_s = 0.0
        self.body: bytes | None = None


@pytest.fixture
def api() -> Iterator[tuple[_Api, str]]:
    state = _Api()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            query = parse_qs(urlparse(self.path).query)
            state.hits.append({"q": query["q"][0], "k": int(query["k"][0]), "auth": self.headers.get("Authorization")})
            time.sleep(state.delay_s)
            if len(state.hits) <= state.fail_first or state.status != 200:
                self.send_response(500 if state.status == 200 else state.status)
                self.end_headers()
                return
            body = state.body if state.body is not None else json.dumps({"results": [
                {"title": f"Result {i} for {query['q'][0]}", "snippet": f"snippet {i}"} for i in range(5)]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/search"
    server.shutdown()
    server.server_close()


def _http(url: str, tmp_path: Path, **kw: object) -> SearchConfig:
    defaults: dict = {"backend": "http", "url": url, "cache_dir": str(tmp_path / "cache"), "timeout_s": 2.0, "retries": 1}
    return SearchConfig(**{**defaults, **kw})


def test_http_results_are_formatted_and_cached_on_disk(api: tuple[_Api, str], tmp_path: Path) -> None:
    state, url = api
    config = _http(url, tmp_path, top_k=2)
    first = make_search(config)("amber weir")
    assert first == "[1] Result 0 for amber weir\nsnippet 0\n[2] Result 1 for amber weir\nsnippet 1"
    assert state.hits == [{"q": "amber weir", "k": 2, "auth": None}]
    # A second run (a fresh callable, as a rerun would make) reads the disk cache.
    assert make_search(config)("amber weir") == first
    assert len(state.hits) == 1
    # An unreadable cache file is a miss, not a crash.
    next((tmp_path / "cache").glob("*.json")).write_text("{broken")
    assert make_search(config)("amber weir") == first
    assert len(state.hits) == 2
    # The cache key includes k: another top_k is another request.
    make_search(_http(url, tmp_path, top_k=3))("amber weir")
    assert len(state.hits) == 3


def test_http_retries_a_500_then_succeeds(api: tuple[_Api, str], tmp_path: Path) -> None:
    state, url = api
    state.fail_first = 1
    out = make_search(_http(url, tmp_path))("tarsholm")
    assert out.startswith("[1] Result 0 for tarsholm")
    assert len(state.hits) == 2


def test_http_persistent_500_is_an_error_text_and_not_cached(api: tuple[_Api, str], tmp_path: Path) -> None:
    state, url = api
    state.status = 500
    search = make_search(_http(url, tmp_path, retries=2))
    out = search("tarsholm")
    assert out == "Error: search failed after 3 attempt(s): HTTP 500 from the search API."
    assert len(state.hits) == 3
    state.status = 200
    assert search("tarsholm").startswith("[1] ")  # failures were not cached
    assert len(state.hits) == 4


def test_http_client_errors_are_not_retried(api: tuple[_Api, str], tmp_path: Path) -> None:
    state, url = api
    state.status = 401
    assert "HTTP 401" in make_search(_http(url, tmp_path, retries=3))("x")
    assert len(state.hits) == 1


def test_http_timeout_is_bounded(api: tuple[_Api, str], tmp_path: Path) -> None:
    state, url = api
    state.delay_s = 1.0
    start = time.monotonic()
    out = make_search(_http(url, tmp_path, timeout_s=0.2, retries=0))("slow")
    assert out.startswith("Error: search failed after 1 attempt(s)") and "time" in out
    assert time.monotonic() - start < 0.9


@pytest.mark.parametrize("body", [b"{not json", b'{"items": []}', b'{"results": [{"snippet": "no title"}]}'])
def test_http_malformed_replies_are_error_texts(api: tuple[_Api, str], tmp_path: Path, body: bytes) -> None:
    state, url = api
    state.body = body
    out = make_search(_http(url, tmp_path, retries=0))("x")
    assert out.startswith("Error: search failed") and "search API" in out


def test_http_api_key_from_the_environment(api: tuple[_Api, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state, url = api
    monkeypatch.delenv("SD_TEST_SEARCH_KEY", raising=False)
    with pytest.raises(ValueError, match="SD_TEST_SEARCH_KEY is not set"):  # when the config is made, not mid-run
        _http(url, tmp_path, api_key_env="SD_TEST_SEARCH_KEY")
    assert state.hits == []
    monkeypatch.setenv("SD_TEST_SEARCH_KEY", "s3cret")
    make_search(_http(url, tmp_path, api_key_env="SD_TEST_SEARCH_KEY"))("x")
    assert state.hits[-1]["auth"] == "Bearer s3cret"


def test_http_search_raises_search_error_directly(api: tuple[_Api, str], tmp_path: Path) -> None:
    state, url = api
    state.status = 503
    waits: list[float] = []
    http = HttpSearch(_http(url, tmp_path, retries=2), sleep=waits.append)
    with pytest.raises(SearchError, match="3 attempt"):
        http.search("x", 3)
    assert waits == [0.5, 1.0] and http.requests == 3
