"""A `ChatModel` over any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, SGLang...).

Each request is one `POST {base_url}/chat/completions` (stdlib `http.client` through
`http_post.post`, no extra dependency); the requests of a `generate` call run concurrently
on a thread pool bounded by `concurrency`.

Time and size are bounded per call, not per read (`http_post` explains how):
- `timeout_s`: one attempt (connect, send, and the whole reply) ends within it;
- `total_timeout_s` (default `(max_retries + 1) * timeout_s`): the call, every attempt and
  backoff sleep included, ends within it; a retry that cannot start in time is not made;
- `max_reply_bytes` (default 8 MiB): a longer reply is not read past the cap.

Failures are handled by kind:
- timeouts, connection errors, HTTP 408, 429 and 5xx: retried with exponential backoff and
  seeded jitter (a server's numeric `Retry-After` is honoured, capped at `max_backoff_s`);
- a 200 whose body is not a usable completion (not JSON, HTML, no choices/message/content,
  over the size cap; with `allow_empty=False` also an empty message): retried the same way,
  since proxies and overloaded servers send such bodies transiently;
- redirects: only a 307/308 to the same origin is followed; any other (another host, port
  or scheme, or a 301/302/303) raises at once, so the key is never sent elsewhere;
- any other 4xx (bad request, bad key, unknown model): raised at once;
- a reply that refuses the request's `response_format` (below): not retried, the next form
  is asked for.
When retries run out, `ModelError` says what happened last, with the HTTP status and an
excerpt of the body. These are the server's faults, always `ModelError`; a mistake of ours
raises as itself. The API key is read from the environment variable `api_key_env` at each
call and only ever sent in the Authorization header, to the origin of `base_url`: every
message the client builds goes through `http_post.redact`, so a server that echoes the key
(or part of it) never gets it printed.

Requests carry temperature, top_p, max_tokens, stop and seed, and ask for log-probabilities
(set `logprobs=False` for servers that reject the field); a reply without them gives empty
`logprobs`. Token counts come from `usage` when the server reports it.

A reply of a given JSON Schema is asked for in the first of `SCHEMA_FORMS` that the endpoint
takes: OpenAI's `json_schema` (OpenAI, vLLM, llama.cpp's own llama-server), then the schema
inside a `json_object` request (llama-cpp-python's server, which answers the first with an
HTTP 500 naming `response_format`, and llama-server), then a plain JSON object. A refusal is
an HTTP 400 or 422, or any error reply whose body names `response_format`; the client
remembers the form that worked and asks for it from then on. OpenAI-style servers
drop the stop string from the reply; `stops.restore_stop` puts it back where the reply shows
it was hit. `token_ids` stay empty: the API returns text, not our tokenizer's ids.

    model = OpenAIModel("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-7B-Instruct")
    [gen] = model.generate([GenRequest(messages)], SamplingParams(temperature=0.6))
    verdict_json = model.chat(messages, json_mode=True)      # one reply, as text
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from score_distill.models.base import BatchedStream, Generation, GenRequest, ModelError, SamplingParams
from score_distill.models.http_post import Redirected, ReplyTooLarge, origin, post, redact
from score_distill.models.stops import restore_stop

log = logging.getLogger(__name__)

EXCERPT_CHARS = 300
MAX_REPLY_BYTES = 8 << 20
# How a reply of a given JSON Schema is asked for, most specific first (module docstring).
SCHEMA_FORMS = ("json_schema", "json_object+schema", "json_object")
# Errors of the connection itself (as opposed to an HTTP answer): worth another attempt.
# OSError covers refused connections, DNS and TLS failures and our deadline (CallTimeout).
TRANSIENT = (OSError, http.client.HTTPException)


class FormatRefused(ModelError):
    """The endpoint refused the request's `response_format`: ask for another form."""


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


def decode_completion(raw: bytes, allow_empty: bool = True) -> Completion:
    """Parse the raw body of a 200 answer; anything but a usable completion (not JSON, not
    UTF-8, nested past the parser's depth, HTML) is a `MalformedReply`.

    >>> decode_completion(b"<html>502 Bad Gateway</html>")
    Traceback (most recent call last):
    ...
    score_distill.models.openai_compat.MalformedReply: not JSON (Expecting value: line 1 column 1 (char 0))
    """
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as err:  # JSON and UTF-8 errors are ValueErrors
        raise MalformedReply(f"not JSON ({err})") from None
    return parse_completion(body, allow_empty)


def parse_completion(body: Any, allow_empty: bool = True) -> Completion:
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
    if not allow_empty and not content.strip():
        raise MalformedReply("the first choice's message content is empty")
    lp = choice.get("logprobs")
    entries = lp.get("content") if isinstance(lp, dict) else None
    logprobs = [_number(e["logprob"], float, "a logprob") for e in entries or []
                if isinstance(e, dict) and "logprob" in e]
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Completion(text=content, finish_reason=str(choice.get("finish_reason") or "stop"),
                      stop_reason=choice.get("stop_reason"), logprobs=logprobs,
                      prompt_tokens=_number(usage.get("prompt_tokens") or 0, int, "usage.prompt_tokens"),
                      cached_tokens=_number(cached or 0, int, "cached_tokens"),
                      completion_tokens=_number(usage.get("completion_tokens") or 0, int, "usage.completion_tokens"))


def _number(value: Any, kind: type, what: str) -> Any:
    """`kind(value)`, or `MalformedReply` when the server sent something else.

    >>> _number("12", int, "usage.prompt_tokens")
    12
    >>> _number([1], int, "usage.prompt_tokens")
    Traceback (most recent call last):
    ...
    score_distill.models.openai_compat.MalformedReply: usage.prompt_tokens is not a number: [1]
    """
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        raise MalformedReply(f"{what} is not a number: {str(value)[:40]}") from None


class OpenAIModel:
    """A `ChatModel` over an OpenAI-compatible endpoint (see the module docstring)."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 120.0,
                 max_retries: int = 5, backoff: float = 1.0, max_backoff_s: float = 60.0, concurrency: int = 8,
                 logprobs: bool = True, extra_body: dict[str, Any] | None = None, seed: int = 0,
                 name: str | None = None, total_timeout_s: float | None = None,
                 max_reply_bytes: int = MAX_REPLY_BYTES, allow_empty: bool = True) -> None:
        if concurrency < 1 or max_retries < 0:
            raise ValueError(f"concurrency must be >= 1 and max_retries >= 0, got {concurrency}, {max_retries}")
        total = (max_retries + 1) * timeout_s if total_timeout_s is None else total_timeout_s
        for what, value in (("timeout_s", timeout_s), ("total_timeout_s", total), ("max_reply_bytes", max_reply_bytes)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{what} must be a positive finite number, got {value!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        origin(self.url)  # a URL we cannot post to is a usage error now, not a retried failure later
        self.model = model
        self.name = name or model
        self.api_key_env = api_key_env
        self.timeout_s, self.max_retries, self.total_timeout_s = timeout_s, max_retries, total
        self.max_reply_bytes = int(max_reply_bytes)
        self.allow_empty = allow_empty
        self.backoff, self.max_backoff_s = backoff, max_backoff_s
        self.concurrency = concurrency
        self.logprobs = logprobs
        self.extra_body = dict(extra_body or {})
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.schema_form = 0  # index into SCHEMA_FORMS: the first form the endpoint has not refused

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
                 json_mode: bool = False, json_schema: tuple[str, dict[str, Any]] | None = None) -> Completion:
        """One chat completion, with retries; raises `ModelError` when they run out.

        `json_mode` asks for a JSON object; `json_schema` (name, JSON Schema) for a reply of
        that shape, in the first of `SCHEMA_FORMS` the endpoint takes (module docstring)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature,
                                "top_p": top_p, "max_tokens": max_tokens}
        if stop:
            body["stop"] = list(stop)
        if seed is not None:
            body["seed"] = seed
        if json_mode and json_schema is None:
            body["response_format"] = {"type": "json_object"}
        if self.logprobs:
            body["logprobs"] = True
        body.update(self.extra_body)
        if json_schema is None:
            return self._post(json.dumps(body).encode())
        form = self.schema_form
        while True:
            payload = {**body, "response_format": response_format(SCHEMA_FORMS[form], *json_schema)}
            try:
                return self._post(json.dumps(payload).encode(), format_sent=True)
            except FormatRefused:
                if form + 1 == len(SCHEMA_FORMS):
                    raise
                log.warning("%s refused response_format %s; asking for %s from now on", self.url,
                            SCHEMA_FORMS[form], SCHEMA_FORMS[form + 1])
                form += 1
                self.schema_form = max(self.schema_form, form)  # threads may race here: the furthest form wins

    # -- transport ----------------------------------------------------------------------

    def _post(self, payload: bytes, format_sent: bool = False) -> Completion:
        """POST with retries, all within `total_timeout_s`. Only 408/429/5xx, connection
        trouble and malformed bodies retry; with `format_sent`, a reply refusing the payload's
        `response_format` raises `FormatRefused` at once."""
        key = self._key()
        budget_end = time.monotonic() + self.total_timeout_s
        last, retry_after, attempts, status = "no attempt made", None, 0, None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self._delay(attempt - 1, retry_after)
                if time.monotonic() + delay >= budget_end:
                    last += f" (no time left for another attempt within total_timeout_s={self.total_timeout_s:g})"
                    break
                time.sleep(delay)
            attempts += 1
            outcome = self._attempt(payload, key, min(time.monotonic() + self.timeout_s, budget_end))
            if isinstance(outcome, Completion):
                return outcome
            last, retry_after, retry, status = outcome
            if format_sent and status is not None and status != 200 and refuses_format(status, last):
                raise FormatRefused(self._error(last, key, status).args[0], status)
            if not retry:
                raise self._error(last, key, status)
        raise self._error(f"failed after {attempts} attempts; last: {last}", key, status)

    def _key(self) -> str | None:
        """The API key from the environment, without the newline `$(cat key.txt)` leaves; a
        key that a header cannot carry is refused here, since http.client would put the
        whole header value, key included, into its error message."""
        key = (os.environ.get(self.api_key_env) or "").strip()
        if key and not (key.isascii() and key.isprintable()):
            raise ValueError(f"${self.api_key_env} holds characters an HTTP header cannot carry "
                             "(a line break or a non-ASCII character); check how it was set")
        return key or None

    def _attempt(self, payload: bytes, key: str | None,
                 deadline: float) -> Completion | tuple[str, float | None, bool, int | None]:
        """One exchange: the completion, or (what went wrong, Retry-After, worth a retry,
        the HTTP status if a reply came)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            reply = post(self.url, payload, headers, deadline, self.max_reply_bytes)
        except Redirected as err:
            return str(err), None, False, None
        except ReplyTooLarge as err:
            return f"{err} (max_reply_bytes)", None, True, None
        except TimeoutError:
            return f"no complete reply within timeout_s={self.timeout_s:g}", None, True, None
        except TRANSIENT as err:
            return f"{type(err).__name__}: {err}", None, True, None
        if reply.status == 200:
            try:
                return decode_completion(reply.body, self.allow_empty)
            except MalformedReply as err:
                return f"HTTP 200 with a malformed body ({err}): {_excerpt(reply.body, key)}", None, True, 200
        retry = reply.status in (408, 429) or reply.status >= 500
        return (f"HTTP {reply.status}: {_excerpt(reply.body, key)}", _seconds(reply.headers.get("Retry-After")), retry,
                reply.status)

    def _error(self, what: str, key: str | None, status: int | None = None) -> ModelError:
        """The one place a failure becomes a message: redacted."""
        return ModelError(redact(f"{self.url} ({self.model}): {what}", [key]), status)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter in [0.5, 1.5) of the step, capped."""
        with self._rng_lock:
            jitter = 0.5 + self._rng.random()
        delay = min(self.max_backoff_s, self.backoff * 2**attempt) * jitter
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff_s))
        return delay


def response_format(form: str, name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The `response_format` field asking for a reply of `schema` in one of `SCHEMA_FORMS`.

    >>> response_format("json_object+schema", "verdict", {"type": "object"})
    {'type': 'json_object', 'schema': {'type': 'object'}}
    """
    if form == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    if form == "json_object+schema":
        return {"type": "json_object", "schema": schema}
    if form == "json_object":
        return {"type": "json_object"}
    raise ValueError(f"unknown response_format form {form!r}; known: {', '.join(SCHEMA_FORMS)}")


def refuses_format(status: int, what: str) -> bool:
    """Whether an error reply (its status, and `what` went wrong, with the body's excerpt)
    refuses the request's `response_format`: a 400 or 422 (the request is invalid), or any
    error that names the field, as llama-cpp-python's server does in an HTTP 500.

    >>> refuses_format(500, "HTTP 500: {'loc': ('body', 'response_format', 'type')}")
    True
    >>> refuses_format(503, "HTTP 503: busy")
    False
    """
    return status in (400, 422) or "response_format" in what


def _excerpt(raw: bytes, key: str | None = None) -> str:
    """The start of a body for error messages, on one line, redacted before it is cut (a cut
    key would no longer match the key). Only a window is decoded: a body may be megabytes long.

    >>> _excerpt(b"x" * 400)[-5:]
    'x...'
    >>> _excerpt(b"y" * 297 + b"sk-abcdefghijkl", "sk-abcdefghijkl")[-12:]
    'yyyyyy[re...'
    """
    # On one line: an HTML error page must not spread a log line or a stop message over many.
    window = " ".join(raw[: 4 * EXCERPT_CHARS + 4 * len(key or "")].decode("utf-8", errors="replace").split())
    text = redact(window, [key])
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
