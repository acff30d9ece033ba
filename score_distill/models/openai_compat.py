"""A `ChatModel` over any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, SGLang...).

Each request is one `POST {base_url}/chat/completions` (stdlib `urllib`, no extra
dependency); the requests of a `generate` call run concurrently on a thread pool bounded by
`concurrency`. Failures are handled by kind:

- timeouts, connection errors, HTTP 429 and 5xx: retried with exponential backoff and
  seeded jitter (a server's numeric `Retry-After` is honoured, capped at `max_backoff_s`);
- a 200 whose body is not a usable completion (not JSON, no choices/message/content):
  retried the same way, since proxies and overloaded servers send such bodies transiently;
- any other 4xx (bad request, bad key, unknown model): raised at once.
When retries run out, `ModelError` says what happened last, with the HTTP status and an
excerpt of the body. The API key is read from the environment variable `api_key_env` at
each request and only ever sent in the Authorization header: it is never logged or stored.

Requests carry temperature, top_p, max_tokens, stop and seed, and ask for log-probabilities
(set `logprobs=False` for servers that reject the field); a reply without them gives empty
`logprobs`. Token counts come from `usage` when the server reports it. OpenAI-style servers
drop the stop string from the reply; `stops.restore_stop` puts it back where the reply shows
it was hit. `token_ids` stay empty: the API returns text, not our tokenizer's ids.

    model = OpenAIModel("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-7B-Instruct")
    [gen] = model.generate([GenRequest(messages)], SamplingParams(temperature=0.6))
    verdict_json = model.chat(messages, json_mode=True)      # one reply, as text
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from score_distill.models.base import BatchedStream, Generation, GenRequest, ModelError, SamplingParams
from score_distill.models.stops import restore_stop

EXCERPT_CHARS = 300
# Errors of the connection itself (as opposed to an HTTP answer): worth another attempt.
TRANSIENT = (TimeoutError, ConnectionError, urllib.error.URLError, http.client.HTTPException)


class MalformedReply(ValueError):
    """A 200 answer whose body is not a usable chat completion."""


@dataclass
class Completion:
    """One chat completion as the server reported it (`finish_reason` unmapped)."""

    text: str
    finish_reason: str = "stop"
    stop_reason: object = None
    logprobs: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


def parse_completion(body: Any) -> Completion:
    """Read a chat completion body; raise `MalformedReply` saying what is missing.

    >>> parse_completion({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
    ...                   "usage": {"prompt_tokens": 5, "completion_tokens": 1}}).prompt_tokens
    5
    >>> parse_completion({"choices": []})
    Traceback (most recent call last):
    ...
    score_distill.models.openai_compat.MalformedReply: no choices in the reply
    """
    if not isinstance(body, dict):
        raise MalformedReply(f"reply is a {type(body).__name__}, not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedReply("no choices in the reply")
    choice = choices[0]
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise MalformedReply("the first choice has no message content")
    lp = choice.get("logprobs")
    entries = lp.get("content") if isinstance(lp, dict) else None
    logprobs = [float(e["logprob"]) for e in entries or [] if isinstance(e, dict) and "logprob" in e]
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Completion(text=content, finish_reason=str(choice.get("finish_reason") or "stop"),
                      stop_reason=choice.get("stop_reason"), logprobs=logprobs,
                      prompt_tokens=int(usage.get("prompt_tokens") or 0), cached_tokens=int(cached or 0),
                      completion_tokens=int(usage.get("completion_tokens") or 0))


class OpenAIModel:
    """A `ChatModel` over an OpenAI-compatible endpoint (see the module docstring)."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 120.0,
                 max_retries: int = 5, backoff: float = 1.0, max_backoff_s: float = 60.0, concurrency: int = 8,
                 logprobs: bool = True, extra_body: dict[str, Any] | None = None, seed: int = 0,
                 name: str | None = None) -> None:
        if concurrency < 1 or max_retries < 0:
            raise ValueError(f"concurrency must be >= 1 and max_retries >= 0, got {concurrency}, {max_retries}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.name = name or model
        self.api_key_env = api_key_env
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff, self.max_backoff_s = backoff, max_backoff_s
        self.concurrency = concurrency
        self.logprobs = logprobs
        self.extra_body = dict(extra_body or {})
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    # -- the ChatModel interface ---------------------------------------------------------

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[Generation]:
        """One assistant turn per request, requested concurrently, in order."""
        if len(requests) <= 1 or self.concurrency == 1:
            return [self._turn(r, params) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(lambda r: self._turn(r, params), requests))

    def open_stream(self, params: SamplingParams, max_rows: int) -> BatchedStream:
        return BatchedStream(self, params, max_rows)

    def release(self, cache_key: str) -> None:
        """Nothing is kept per trajectory on our side (servers cache prefixes themselves)."""

    def _turn(self, request: GenRequest, params: SamplingParams) -> Generation:
        started = time.perf_counter()
        seed = request.seed if request.seed is not None else params.seed
        done = self.complete(request.messages, temperature=params.temperature, top_p=params.top_p,
                             max_tokens=params.max_new_tokens, stop=params.stop, seed=seed)
        text, finish = restore_stop(done.text, done.finish_reason, done.stop_reason, params.stop)
        return Generation(text=text, logprobs=done.logprobs, finish_reason=finish,
                          prompt_tokens=max(done.prompt_tokens - done.cached_tokens, 0),
                          cached_tokens=done.cached_tokens, time_s=time.perf_counter() - started)

    # -- single calls -------------------------------------------------------------------

    def chat(self, messages: list[dict[str, str]], *, temperature: float = 0.0, max_tokens: int = 1024,
             json_mode: bool = False, seed: int | None = None) -> str:
        """The reply text of one call; `json_mode` asks for a JSON object
        (`response_format={"type": "json_object"}`)."""
        return self.complete(messages, temperature=temperature, max_tokens=max_tokens,
                             json_mode=json_mode, seed=seed).text

    def complete(self, messages: list[dict[str, str]], *, temperature: float = 0.0, top_p: float = 1.0,
                 max_tokens: int = 1024, stop: tuple[str, ...] = (), seed: int | None = None,
                 json_mode: bool = False) -> Completion:
        """One chat completion, with retries; raises `ModelError` when they run out."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature,
                                "top_p": top_p, "max_tokens": max_tokens}
        if stop:
            body["stop"] = list(stop)
        if seed is not None:
            body["seed"] = seed
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        if self.logprobs:
            body["logprobs"] = True
        body.update(self.extra_body)
        return self._post(json.dumps(body).encode())

    # -- transport ----------------------------------------------------------------------

    def _post(self, payload: bytes) -> Completion:
        """POST with retries. Only 429/5xx, connection trouble and malformed bodies retry."""
        last, retry_after = "no attempt made", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self._delay(attempt - 1, retry_after))
                retry_after = None
            try:
                status, headers, raw = self._send(payload)
            except TRANSIENT as err:
                last = f"{type(err).__name__}: {err}"
                continue
            if status == 200:
                try:
                    return parse_completion(json.loads(raw))
                except (ValueError, TypeError, KeyError) as err:  # json errors are ValueErrors
                    last = f"HTTP 200 with a malformed body ({err}): {_excerpt(raw)}"
                    continue
            last = f"HTTP {status}: {_excerpt(raw)}"
            if status != 429 and status < 500:
                raise ModelError(f"{self.url} ({self.model}): {last}")
            retry_after = _seconds(headers.get("Retry-After"))
        raise ModelError(f"{self.url} ({self.model}): failed after {self.max_retries + 1} attempts; last: {last}")

    def _send(self, payload: bytes) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One HTTP exchange: (status, headers, body); HTTP errors come back as statuses."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.headers, err.read()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter in [0.5, 1.5) of the step, capped."""
        with self._rng_lock:
            jitter = 0.5 + self._rng.random()
        delay = min(self.max_backoff_s, self.backoff * 2**attempt) * jitter
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff_s))
        return delay


def _excerpt(raw: bytes) -> str:
    """The start of a body, for error messages.

    >>> _excerpt(b"x" * 400)[-5:]
    'x...'
    """
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def _seconds(value: str | None) -> float | None:
    """A numeric Retry-After value in seconds (the HTTP-date form is ignored).

    >>> _seconds("2"), _seconds("Wed, 21 Oct 2015 07:28:00 GMT"), _seconds(None)
    (2.0, None, None)
    """
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
