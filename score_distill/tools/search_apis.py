"""The wire protocols of the search services `web_search` can ask: how one query becomes a
request and how a reply becomes (title, text) pairs. The disk cache, retries, the key and
the observation text are `search.py`'s; nothing here touches the network or the environment.

Each protocol as checked in 2026-12: Search-R1's against its server's source, Serper's against
the clients that call it (it publishes a playground, not a reference), the others against
their services' API documentation.
- http: ours. GET `url?q=QUERY&k=K`; reply `{"results": [{"title", "snippet" | "text"}]}`.
- retriever: the retrieval server of Search-R1 (`search_r1/search/retrieval_server.py`), the
  e5 + FAISS index over a Wikipedia dump (wiki-18) that agent-search papers train and
  evaluate with. POST `{"queries": [QUERY], "topk": K, "return_scores": true}` to
  `.../retrieve`; reply `{"result": [[{"document": {"id", "contents"}, "score"}, ...]]}`, one
  list per query. `contents` is a line of a FlashRAG-format corpus: the title in double
  quotes, a newline, the passage.
- serper: POST `https://google.serper.dev/search`, header `X-API-KEY`, JSON `{"q", "num"}`;
  reply `{"organic": [{"title", "link", "snippet"}]}`.
- tavily: POST `https://api.tavily.com/search`, header `Authorization: Bearer KEY`, JSON
  `{"query", "max_results"}` (at most 20); reply `{"results": [{"title", "url", "content"}]}`.
- brave: GET `https://api.search.brave.com/res/v1/web/search?q=&count=` (at most 20), header
  `X-Subscription-Token`; reply `{"type": "search", "web": {"results": [{"title", "url",
  "description"}]}}`, without "web" when nothing matched. Its texts carry HTML highlights
  (`<strong>`) and entities, which are removed here.
- searxng: GET `BASE/search?q=&format=json` on a SearXNG instance, which answers 403 unless
  `json` is in `search.formats` of its settings.yml; reply `{"results": [{"title", "url",
  "content"}]}`. SearXNG has no parameter for the number of results: the first K are kept.

A reply of the wrong shape raises SearchError (its message becomes the tool's output); every
text taken from a reply passes `storage.safe_text`, as all server text does.
"""

from __future__ import annotations

import html
import json
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable

from score_distill.storage import safe_text

Pairs = list[tuple[str, str]]  # (title, text) per result, best first


class SearchError(RuntimeError):
    """The search API failed; the message becomes the tool's output. `retry` says whether
    another attempt may help (not for a refused key or a bad request)."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class Api:
    """One search service: where it listens by default, which variable holds its key by
    default ("" = it takes none unless `api_key_env` names one), and its wire format."""

    default_url: str  # "" = `url` must be given
    key_env: str
    request: Callable[[str, str, int, str], urllib.request.Request]  # (url, query, k, key)
    reply: Callable[[object, int], Pairs]  # (the decoded JSON reply, k)
    hint_403: str = ""  # what a 403 usually means here, shown with the error


def endpoint(url: str, path: str) -> str:
    """`url`, with `path` appended unless its path already ends with it.

    >>> endpoint("http://127.0.0.1:8000", "/retrieve"), endpoint("http://h:8000/retrieve", "/retrieve")
    ('http://127.0.0.1:8000/retrieve', 'http://h:8000/retrieve')
    """
    if urllib.parse.urlsplit(url).path.rstrip("/").endswith(path):
        return url
    return url.rstrip("/") + path


def _get(url: str, params: dict, headers: dict[str, str]) -> urllib.request.Request:
    return urllib.request.Request(f"{url}?{urllib.parse.urlencode(params)}",
                                  headers={"Accept": "application/json", **headers})


def _post(url: str, body: dict, headers: dict[str, str]) -> urllib.request.Request:
    return urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Accept": "application/json", "Content-Type": "application/json", **headers})


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _listed(data: object, name: str) -> list:
    value = data.get(name) if isinstance(data, dict) else None
    if not isinstance(value, list):
        raise SearchError(f"the search API reply has no {name!r} list")
    return value


def _pairs(results: list, k: int, text_keys: tuple[str, ...], clean: Callable[[str], str] = str) -> Pairs:
    """(title, text) of the first `k` results; the text is the first of `text_keys` present."""
    out = []
    for r in results[:k]:
        if not isinstance(r, dict) or not isinstance(r.get("title"), str):
            raise SearchError("a search API result has no 'title'")
        text = next((r[key] for key in text_keys if key in r), "")
        out.append((safe_text(clean(r["title"])), safe_text(clean(text)) if isinstance(text, str) else ""))
    return out


def parse_http(data: object, k: int) -> Pairs:
    """Our own reply: {"results": [{"title", "snippet" or "text"}]}.

    >>> parse_http({"results": [{"title": "A", "snippet": "a"}, {"title": "B", "text": "b"}]}, 5)
    [('A', 'a'), ('B', 'b')]
    """
    return _pairs(_listed(data, "results"), k, ("snippet", "text"))


def split_contents(contents: str) -> tuple[str, str]:
    """(title, text) of a FlashRAG-format passage: the first line is the title, in quotes.

    >>> split_contents('"Tarsholm"\\nTarsholm is a city in Velmaria.')
    ('Tarsholm', 'Tarsholm is a city in Velmaria.')
    >>> split_contents("a passage with no title line")
    ('', 'a passage with no title line')
    """
    first, newline, rest = contents.partition("\n")
    if not newline:
        return "", contents
    title = first.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, rest


def parse_retriever(data: object, k: int) -> Pairs:
    """A Search-R1 retrieval server's reply to one query.

    >>> parse_retriever({"result": [[{"document": {"id": "7", "contents": '"A"\\na b'}, "score": 0.9}]]}, 3)
    [('A', 'a b')]
    """
    per_query = _listed(data, "result")
    if len(per_query) != 1 or not isinstance(per_query[0], list):
        raise SearchError("the search API reply's 'result' is not one list for the one query sent")
    out = []
    for item in per_query[0][:k]:
        # With return_scores the server wraps each document; without, it lists them bare.
        doc = item.get("document", item) if isinstance(item, dict) else None
        contents = doc.get("contents") if isinstance(doc, dict) else None
        if not isinstance(contents, str):
            raise SearchError("a search API result has no 'contents'")
        title, text = split_contents(contents)
        out.append((safe_text(title), safe_text(text)))
    return out


def parse_serper(data: object, k: int) -> Pairs:
    """Serper's organic results; a reply that has searchParameters but no "organic" found nothing.

    >>> parse_serper({"organic": [{"title": "A", "link": "https://a", "snippet": "a"}]}, 3)
    [('A', 'a')]
    """
    if isinstance(data, dict) and "organic" not in data and "searchParameters" in data:
        return []  # a well-formed reply with no web results
    return _pairs(_listed(data, "organic"), k, ("snippet",))


def parse_tavily(data: object, k: int) -> Pairs:
    """Tavily's results.

    >>> parse_tavily({"query": "q", "results": [{"title": "A", "url": "https://a", "content": "a"}]}, 3)
    [('A', 'a')]
    """
    return _pairs(_listed(data, "results"), k, ("content",))


_TAG = re.compile(r"<[^<>]*>")


def plain(text: str) -> str:
    """Brave's text without its HTML highlights and entities.

    >>> plain("The <strong>Amber</strong> Weir&#x27;s author")
    "The Amber Weir's author"
    """
    return html.unescape(_TAG.sub("", text))


def parse_brave(data: object, k: int) -> Pairs:
    """Brave's web results; a reply without "web" found nothing.

    >>> parse_brave({"type": "search", "web": {"results": [{"title": "A", "description": "<strong>a</strong>"}]}}, 3)
    [('A', 'a')]
    >>> parse_brave({"type": "search", "query": {"original": "zzz"}}, 3)
    []
    """
    if isinstance(data, dict) and data.get("type") == "search" and "web" not in data:
        return []
    return _pairs(_listed(data.get("web") if isinstance(data, dict) else None, "results"), k, ("description",), plain)


def parse_searxng(data: object, k: int) -> Pairs:
    """A SearXNG instance's results.

    >>> parse_searxng({"query": "q", "results": [{"title": "A", "url": "https://a", "content": "a"}]}, 3)
    [('A', 'a')]
    """
    return _pairs(_listed(data, "results"), k, ("content",))


def request_http(url: str, query: str, k: int, key: str) -> urllib.request.Request:
    return _get(url, {"q": query, "k": k}, _bearer(key))


def request_retriever(url: str, query: str, k: int, key: str) -> urllib.request.Request:
    return _post(endpoint(url, "/retrieve"), {"queries": [query], "topk": k, "return_scores": True}, _bearer(key))


def request_serper(url: str, query: str, k: int, key: str) -> urllib.request.Request:
    return _post(url, {"q": query, "num": k}, {"X-API-KEY": key})


def request_tavily(url: str, query: str, k: int, key: str) -> urllib.request.Request:
    return _post(url, {"query": query, "max_results": min(k, 20)}, _bearer(key))


def request_brave(url: str, query: str, k: int, key: str) -> urllib.request.Request:
    return _get(url, {"q": query, "count": min(k, 20)}, {"X-Subscription-Token": key})


def request_searxng(url: str, query: str, k: int, key: str) -> urllib.request.Request:
    return _get(endpoint(url, "/search"), {"q": query, "format": "json"}, _bearer(key))


APIS: dict[str, Api] = {
    "http": Api("", "", request_http, parse_http),
    "retriever": Api("http://127.0.0.1:8000/retrieve", "", request_retriever, parse_retriever),
    "serper": Api("https://google.serper.dev/search", "SERPER_API_KEY", request_serper, parse_serper),
    "tavily": Api("https://api.tavily.com/search", "TAVILY_API_KEY", request_tavily, parse_tavily),
    "brave": Api("https://api.search.brave.com/res/v1/web/search", "BRAVE_API_KEY", request_brave, parse_brave),
    "searxng": Api("", "", request_searxng, parse_searxng,
                   hint_403="a SearXNG instance answers 403 unless json is in search.formats of its settings.yml"),
}
