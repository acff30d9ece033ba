"""The `web_search(query)` tool: BM25 over a local corpus, a retrieval server, or a web search API.

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
- "http": our own protocol, GET `url?q=<query>&k=<top_k>`, reply JSON
  `{"results": [{"title": ..., "snippet": ...}, ...]}` ("text" may stand for "snippet").
- "retriever": the retrieval server of Search-R1 (e5 + FAISS over Wikipedia, the setup
  agent-search papers report), POST `/retrieve`; `url` defaults to http://127.0.0.1:8000/retrieve.
- "serper", "tavily", "brave": those web search APIs at their public endpoints, keys from
  SERPER_API_KEY, TAVILY_API_KEY, BRAVE_API_KEY. "searxng": a SearXNG instance at `url`.
  The wire format of each is in `search_apis.py`.

Every backend but bm25 shares one `HttpSearch`: `url` overrides the default endpoint, the key
is read from the environment variable `api_key_env` (or the API's own default), and a missing
key is a one-line error when the config is made (flags, YAML), before a model is loaded.
Successful replies are cached on disk under `cache_dir`, keyed by (backend, url, query, k),
so a rerun or an evaluation sees exactly the same results and does not hit the API.
Failures are retried a bounded number of times (5xx, 408, 429, timeouts, dropped
connections; not 4xx such as a refused key or a bad request), then come back as an error
text that becomes the tool's output: a dead API is the agent's bad luck, never a crash of ours.

The key is sent only to the configured endpoint (redirects are not followed, since urllib
would carry the key's header to wherever a redirect points), and it is never written to the
cache, a log line or an error text. Search runs in our process: the sandboxed model code
calls `web_search` over its pipe and gets result text back, never the key or our environment.
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
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from score_distill.config import option
from score_distill.storage import atomic_write_json, safe_text
from score_distill.tools.search_apis import APIS, Api, Pairs, SearchError

EMBEDDED = "embedded:"
MAX_QUERY_CHARS = 1000  # longer "queries" are model mistakes (a pasted document), not searches
BACKENDS = ("bm25", *APIS)
log = logging.getLogger(__name__)


@dataclass
class SearchConfig:
    backend: str = option("bm25", "search backend: bm25 (local corpus), http (our GET protocol), retriever "
                                  "(a Search-R1 retrieval server), serper, tavily, brave (web search APIs) or searxng")
    corpus: str = option("", "bm25 corpus: a JSONL file of {id, title, text}, or embedded:<seed> for the generated world")
    top_k: int = option(3, "number of results returned per query")
    snippet_chars: int = option(300, "characters of each result's text shown (longer text is cut at a word)")
    url: str = option("", "other backends: the endpoint; empty: the backend's default (retriever "
                          "http://127.0.0.1:8000/retrieve; serper, tavily, brave their public APIs); required for "
                          "http (GET url?q=QUERY&k=K) and searxng (the instance's base URL)")
    api_key_env: str = option("", "other backends: the environment variable holding the API key; empty: the "
                                  "backend's default (SERPER_API_KEY, TAVILY_API_KEY, BRAVE_API_KEY; none for http, "
                                  "retriever and searxng, which then send a Bearer key only when this names one)")
    cache_dir: str = option(".cache/search", "other backends: directory of cached replies, keyed by (backend, url, "
                                             "query, k); the key is never written there")
    timeout_s: float = option(10.0, "other backends: timeout of one request in seconds")
    retries: int = option(2, "other backends: extra attempts after a failed request (5xx, 408, 429, timeouts; "
                             "never a refused key or another 4xx)")

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"SearchConfig.backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        if self.top_k < 1:
            raise ValueError(f"SearchConfig.top_k must be at least 1, got {self.top_k}")
        if self.retries < 0 or self.timeout_s <= 0:
            raise ValueError("SearchConfig.retries must be >= 0 and timeout_s > 0")
        if self.backend != "bm25":
            # Checked when the config is made (flags, YAML), so a command stops in one line
            # before it loads a model; HttpSearch reads the key again where it is used.
            api = APIS[self.backend]
            if not (self.url or api.default_url):
                raise ValueError(f"SearchConfig.url is required for the {self.backend} backend")
            if self.api_key_env or api.key_env:
                read_key(self.api_key_env or api.key_env, self.backend)

    def local_corpus(self) -> str:
        """The configured corpus the bm25 backend reads ("" when none or another backend);
        checked with the task files before a run starts.

        >>> SearchConfig(corpus="docs.jsonl").local_corpus(), SearchConfig(backend="retriever").local_corpus()
        ('docs.jsonl', '')
        """
        return self.corpus if self.backend == "bm25" else ""


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
        blocks.append(f"[{i}] {title}".rstrip() + f"\n{text}")  # a passage may have no title
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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would resend the key's header to wherever one points. A 3xx
    then comes back as an HTTP error, which names the status."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def read_key(env: str, backend: str) -> str:
    """The API key in the environment variable `env`; a missing or unsendable key raises
    one line that names the variable, never the key."""
    key = os.environ.get(env, "").strip()
    if not key:
        raise ValueError(f"{env} is not set: the {backend} search backend reads its API key there "
                         "(tools.search.api_key_env names another variable)")
    if not (key.isascii() and key.isprintable()):
        raise ValueError(f"${env} holds characters an HTTP header cannot carry")
    return key


class HttpSearch:
    """A search service over HTTP (any backend but bm25), with a disk cache, a timeout and
    bounded retries. The wire format is the backend's `Api`; the policy is the same for all."""

    def __init__(self, config: SearchConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        self.api: Api = APIS[config.backend]
        self.url = config.url or self.api.default_url  # SearchConfig made sure there is one
        self.key_env = config.api_key_env or self.api.key_env
        self._key = read_key(self.key_env, config.backend) if self.key_env else ""
        self.config = config
        self.sleep = sleep
        self.requests = 0  # requests actually sent (cache hits excluded)

    def _cache_path(self, query: str, k: int) -> Path:
        # "http" keeps the key it always had, so caches written before other backends existed
        # still answer; every other key names its backend, so two backends never share an entry.
        parts = [self.url, query, k] if self.config.backend == "http" else [self.config.backend, self.url, query, k]
        ident = json.dumps(parts, ensure_ascii=False)
        return Path(self.config.cache_dir) / f"{hashlib.sha256(ident.encode()).hexdigest()}.json"

    def search(self, query: str, k: int) -> Pairs:
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

    def _request(self, query: str, k: int) -> Pairs:
        request = self.api.request(self.url, query, k, self._key)
        self.requests += 1
        try:
            with _OPENER.open(request, timeout=self.config.timeout_s) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            # Client errors other than "too many requests" / "timeout" will not get better.
            raise SearchError(f"HTTP {e.code} from the search API{self._hint(e.code)}",
                              retry=e.code >= 500 or e.code in (408, 429)) from None
        except urllib.error.URLError as e:
            raise SearchError(f"cannot reach the search API ({e.reason})") from None
        except (TimeoutError, OSError, http.client.HTTPException) as e:
            raise SearchError(f"the search API did not answer in time or broke off ({type(e).__name__})") from None
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SearchError("the search API replied with malformed JSON") from None
        return self.api.reply(data, k)

    def _hint(self, status: int) -> str:
        """What a refusal most likely means, naming the key's variable (never the key)."""
        if status in (401, 403) and self.key_env:
            return f" (was the key in ${self.key_env} refused?)"
        if status == 403 and self.api.hint_403:
            return f" ({self.api.hint_403})"
        if 300 <= status < 400:
            return " (a redirect, not followed: give the final URL)"
        return ""


def make_search(config: SearchConfig) -> Callable[[str], str]:
    """The `web_search(query) -> str` callable for `config`. Bad queries and API failures
    come back as text (the model's mistake or bad luck); a missing corpus, URL or API key
    raises at once."""
    if config.backend == "bm25":
        if not config.corpus:
            raise ValueError("SearchConfig.corpus is required for the bm25 backend")
        index = bm25_index(config.corpus)

        def lookup(query: str, k: int) -> Pairs:
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
