"""The `web_search(query)` tool: BM25 over a local corpus, or an HTTP search API.

One `SearchConfig` and one formatting function serve every stage, so collection, training
and evaluation see the same observation for the same query:

    search = make_search(SearchConfig(corpus="embedded:0"))   # the generated world of seed 0
    print(search("The Amber Weir author"))
    [1] The Amber Weir
    'The Amber Weir' is a novel by ...

Backends:
- "bm25": `corpus` is a JSONL file of {"id", "title", "text"} or "embedded:<seed>" (the
  generated world of `score_distill.tasks.world`). Indexes are built once per corpus and
  process, because rollouts open many sandboxes.
- "http": GET `url?q=<query>&k=<top_k>` with the key from the environment variable
  `api_key_env` (sent as `Authorization: Bearer <key>`); the reply is JSON
  `{"results": [{"title": ..., "snippet": ...}, ...]}` ("text" may stand for "snippet").
  Successful replies are cached on disk under `cache_dir`, keyed by (url, query, k), so a
  rerun or an evaluation sees exactly the same results and does not hit the API. Failures
  are retried a bounded number of times, then come back as an error text that becomes the
  tool's output: a dead API is the agent's bad luck, never a crash of ours.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from score_distill.config import option
from score_distill.storage import atomic_write_json, safe_text

EMBEDDED = "embedded:"
MAX_QUERY_CHARS = 1000  # longer "queries" are model mistakes (a pasted document), not searches
log = logging.getLogger(__name__)


@dataclass
class SearchConfig:
    backend: str = option("bm25", "search backend: bm25 (local corpus) or http (a search API)")
    corpus: str = option("", "bm25 corpus: a JSONL file of {id, title, text}, or embedded:<seed> for the generated world")
    top_k: int = option(3, "number of results returned per query")
    snippet_chars: int = option(300, "characters of each result's text shown (longer text is cut at a word)")
    url: str = option("", "http backend: the search endpoint (GET url?q=QUERY&k=K, JSON reply)")
    api_key_env: str = option("", "http backend: name of the environment variable holding the API key (empty: no key)")
    cache_dir: str = option(".cache/search", "http backend: directory of cached replies, keyed by (url, query, k)")
    timeout_s: float = option(10.0, "http backend: timeout of one request in seconds")
    retries: int = option(2, "http backend: extra attempts after a failed request")

    def __post_init__(self) -> None:
        if self.backend not in ("bm25", "http"):
            raise ValueError(f"SearchConfig.backend must be 'bm25' or 'http', got {self.backend!r}")
        if self.top_k < 1:
            raise ValueError(f"SearchConfig.top_k must be at least 1, got {self.top_k}")
        if self.retries < 0 or self.timeout_s <= 0:
            raise ValueError("SearchConfig.retries must be >= 0 and timeout_s > 0")

    def local_corpus(self) -> str:
        """The configured corpus the bm25 backend reads ("" when none or another backend);
        checked with the task files before a run starts.

        >>> SearchConfig(corpus="docs.jsonl").local_corpus(), SearchConfig(backend="http").local_corpus()
        ('docs.jsonl', '')
        """
        return self.corpus if self.backend == "bm25" else ""


class SearchError(RuntimeError):
    """The search API failed; the message becomes the tool's output. `retry` says whether
    another attempt may help (not for a refused key or a bad request)."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


def format_results(query: str, results: list[tuple[str, str]], snippet_chars: int) -> str:
    """THE observation text of a search: numbered titles, each followed by its snippet.

    >>> print(format_results("q", [("Tarsholm", "Tarsholm is a city in Velmaria.")], 300))
    [1] Tarsholm
    Tarsholm is a city in Velmaria.
    >>> format_results("zzz", [], 300)
    "No results for 'zzz'."
    >>> format_results("q", [("T", "one two three")], 8)
    '[1] T\\none two ...'
    """
    if not results:
        return f"No results for {query!r}."
    blocks = []
    for i, (title, text) in enumerate(results, 1):
        text = " ".join(text.split())
        if len(text) > snippet_chars:
            text = text[:snippet_chars].rsplit(" ", 1)[0] + " ..."
        blocks.append(f"[{i}] {title}\n{text}")
    return "\n".join(blocks)


def load_corpus(spec: str) -> list[dict]:
    """The documents of a corpus spec: a JSONL path or "embedded:<seed>"."""
    if spec.startswith(EMBEDDED):
        from score_distill.tasks.world import build_world

        seed = spec[len(EMBEDDED):]
        if not seed.lstrip("-").isdigit():
            raise ValueError(f"corpus {spec!r}: expected embedded:<integer seed>")
        return build_world(int(seed)).corpus()
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"search corpus {spec!r} is neither embedded:<seed> nor an existing JSONL file")
    docs = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            doc = json.loads(line)
            if not isinstance(doc, dict) or not {"title", "text"} <= set(doc):
                raise ValueError(f"{spec}:{i + 1}: a corpus line needs 'title' and 'text'")
            docs.append(doc)
    return docs


class Bm25Index:
    """BM25 over titles and texts (the title counts as part of the document, so a search
    for a name ranks that name's own document first)."""

    def __init__(self, docs: list[dict]) -> None:
        import bm25s  # imported here: building an index is the only use

        self._bm25s = bm25s
        self.docs = docs
        self.retriever = bm25s.BM25()
        if docs:
            tokens = bm25s.tokenize([f"{d['title']}. {d['text']}" for d in docs], stopwords="en", show_progress=False)
            self.retriever.index(tokens, show_progress=False)

    def search(self, query: str, k: int) -> list[dict]:
        """The top `k` documents with a positive score, best first."""
        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)
        if not self.docs or not tokens[0]:
            return []
        ids, scores = self.retriever.retrieve(tokens, k=min(k, len(self.docs)), show_progress=False)
        return [self.docs[int(i)] for i, s in zip(ids[0], scores[0]) if s > 0]


@functools.lru_cache(maxsize=16)
def _index_for(spec: str, stamp: float) -> Bm25Index:
    return Bm25Index(load_corpus(spec))


def bm25_index(spec: str) -> Bm25Index:
    """The index of a corpus spec, built once per process (rebuilt if the file changed)."""
    stamp = 0.0 if spec.startswith(EMBEDDED) else Path(spec).stat().st_mtime
    return _index_for(spec, stamp)


class HttpSearch:
    """A search API behind a GET endpoint, with a disk cache, a timeout and bounded retries."""

    def __init__(self, config: SearchConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        if not config.url:
            raise ValueError("SearchConfig.url is required for the http backend")
        self.config = config
        self.sleep = sleep
        self.requests = 0  # requests actually sent (cache hits excluded)

    def _cache_path(self, query: str, k: int) -> Path:
        key = json.dumps([self.config.url, query, k], ensure_ascii=False)
        return Path(self.config.cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def search(self, query: str, k: int) -> list[tuple[str, str]]:
        """Results for `query`, from the cache when present. Raises SearchError."""
        path = self._cache_path(query, k)
        if path.is_file():
            try:
                return [(str(t), str(x)) for t, x in json.loads(path.read_text(encoding="utf-8"))]
            except (json.JSONDecodeError, ValueError, TypeError):
                log.warning("search cache: unreadable %s, asking the API again", path)
        last = ""
        for attempt in range(self.config.retries + 1):
            if attempt:
                self.sleep(min(0.5 * 2 ** (attempt - 1), 4.0))
            try:
                results = self._request(query, k)
            except SearchError as e:
                last = str(e)
                if not e.retry:
                    break
                continue
            atomic_write_json(path, results, indent=None)  # concurrent sandboxes never read half a file
            return results
        raise SearchError(f"search failed after {attempt + 1} attempt(s): {last}", retry=False)

    def _request(self, query: str, k: int) -> list[tuple[str, str]]:
        url = f"{self.config.url}?{urllib.parse.urlencode({'q': query, 'k': k})}"
        headers = {"Accept": "application/json"}
        if self.config.api_key_env:
            key = os.environ.get(self.config.api_key_env)
            if not key:
                raise SearchError(f"the API key variable {self.config.api_key_env} is not set", retry=False)
            headers["Authorization"] = f"Bearer {key}"
        self.requests += 1
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.config.timeout_s) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            # Client errors other than "too many requests" / "timeout" will not get better.
            raise SearchError(f"HTTP {e.code} from the search API", retry=e.code >= 500 or e.code in (408, 429)) from None
        except urllib.error.URLError as e:
            raise SearchError(f"cannot reach the search API ({e.reason})") from None
        except (TimeoutError, OSError, http.client.HTTPException) as e:
            raise SearchError(f"the search API did not answer in time or broke off ({type(e).__name__})") from None
        return _parse_reply(body, k)


def _parse_reply(body: bytes, k: int) -> list[tuple[str, str]]:
    """(title, snippet) pairs from a JSON reply; malformed replies raise SearchError.

    >>> _parse_reply(b'{"results": [{"title": "A", "snippet": "a"}, {"title": "B", "text": "b"}]}', 5)
    [('A', 'a'), ('B', 'b')]
    """
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SearchError("the search API replied with malformed JSON") from None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        raise SearchError("the search API reply has no 'results' list")
    out = []
    for r in results[:k]:
        if not isinstance(r, dict) or not isinstance(r.get("title"), str):
            raise SearchError("a search API result has no 'title'")
        snippet = r.get("snippet", r.get("text", ""))
        # A server's text is data: stored and shown under the rule of storage.safe_text.
        out.append((safe_text(r["title"]), safe_text(snippet) if isinstance(snippet, str) else ""))
    return out


def make_search(config: SearchConfig) -> Callable[[str], str]:
    """The `web_search(query) -> str` callable for `config`. Bad queries and API failures
    come back as text (the model's mistake or bad luck); a missing corpus raises at once."""
    if config.backend == "bm25":
        if not config.corpus:
            raise ValueError("SearchConfig.corpus is required for the bm25 backend")
        index = bm25_index(config.corpus)

        def lookup(query: str, k: int) -> list[tuple[str, str]]:
            return [(d["title"], d["text"]) for d in index.search(query, k)]
    else:
        lookup = HttpSearch(config).search

    def web_search(query: str) -> str:
        if not isinstance(query, str):
            return f"Error: web_search expects a text query, got {type(query).__name__}."
        query = safe_text(query)  # model text: a lone surrogate cannot go into a URL or a cache key
        if not query.strip():
            return "Error: web_search got an empty query."
        if len(query) > MAX_QUERY_CHARS:
            return f"Error: the query is {len(query)} characters long; keep it under {MAX_QUERY_CHARS}."
        try:
            results = lookup(query, config.top_k)
        except SearchError as e:
            return f"Error: {e}."
        return format_results(query, results, config.snippet_chars)

    return web_search
