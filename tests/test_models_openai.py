"""The OpenAI-compatible client against a scripted HTTP server on 127.0.0.1: request fields,
reply parsing, retries (timeouts, 5xx, 429, malformed bodies), immediate 4xx errors,
concurrency, and the `load_model` spec syntax."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from score_distill.agent.format import STOP_STRINGS
from score_distill.models import openai_compat
from score_distill.models.base import GenRequest, ModelError, SamplingParams
from score_distill.models.load import load_model
from score_distill.models.openai_compat import OpenAIModel


@dataclass
class Answer:
    """What the server does with one request."""

    status: int = 200
    body: Any = None  # dict (sent as JSON) or str (sent raw)
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def completion(text: str, finish: str = "stop", logprobs: Any = None, **extra: Any) -> dict[str, Any]:
    choice = {"message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": logprobs}
    return {"choices": [choice], **extra}


class Server:
    """Answers POST /v1/chat/completions with `respond(request_number, body, headers)`, and
    records requests and the most requests ever in flight at once."""

    def __init__(self, respond: Callable[[int, dict[str, Any], dict[str, str]], Answer]) -> None:
        self.respond, self.requests, self.headers = respond, [], []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    n = len(outer.requests)
                    outer.requests.append(body)
                    outer.headers.append(dict(self.headers))
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    answer = outer.respond(n, body, dict(self.headers))
                    if answer.delay_s:
                        time.sleep(answer.delay_s)
                    raw = answer.body if isinstance(answer.body, str) else json.dumps(answer.body)
                    payload = raw.encode()
                    self.send_response(answer.status)
                    for k, v in answer.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(respond: Callable[[int, dict[str, Any], dict[str, str]], Answer]) -> Server:
        servers.append(Server(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def client(server: Server, **kw: Any) -> OpenAIModel:
    opts = {"timeout_s": 2.0, "max_retries": 3, "backoff": 0.01, "max_backoff_s": 0.05} | kw
    return OpenAIModel(server.url, "fake-model", **opts)


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]


def test_request_fields_and_reply_parsing(serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", "sk-secret")
    reply = completion("<thought>add</thought>\n<code>\nprint(2 + 2)\n", logprobs={
        "content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -0.25}]},
        usage={"prompt_tokens": 20, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 8}})
    server = serve(lambda n, body, headers: Answer(body=reply))
    model = client(server, api_key_env="TEST_KEY")
    params = SamplingParams(temperature=0.6, top_p=0.95, max_new_tokens=64, stop=STOP_STRINGS, seed=5)
    [gen] = model.generate([GenRequest(MESSAGES, seed=11)], params)
    [sent] = server.requests
    assert sent == {"model": "fake-model", "messages": MESSAGES, "temperature": 0.6, "top_p": 0.95, "max_tokens": 64,
                    "stop": list(params.stop), "seed": 11, "logprobs": True}
    assert server.headers[0]["Authorization"] == "Bearer sk-secret"
    # The server dropped the stop string; the open <code> shows it was hit.
    assert gen.text.endswith("print(2 + 2)\n</code>") and gen.finish_reason == "stop"
    assert gen.logprobs == [-0.5, -0.25] and gen.token_ids == []
    assert (gen.prompt_tokens, gen.cached_tokens) == (12, 8)
    assert gen.time_s > 0


def test_reply_without_logprobs_or_usage(serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = serve(lambda n, body, headers: Answer(body=completion("The answer is 4.", logprobs=None)))
    [gen] = client(server, logprobs=False).generate([GenRequest(MESSAGES)], SamplingParams(seed=None))
    assert "logprobs" not in server.requests[0] and "seed" not in server.requests[0]
    assert "Authorization" not in server.headers[0]
    assert gen.text == "The answer is 4." and gen.finish_reason == "eos"
    assert gen.logprobs == [] and gen.prompt_tokens == 0


def test_timeout_is_retried(serve: Callable[..., Server]) -> None:
    server = serve(lambda n, body, headers: Answer(body=completion("late" if n == 0 else "ok"), delay_s=1.0 if n == 0 else 0))
    started = time.perf_counter()
    assert client(server, timeout_s=0.3).chat(MESSAGES) == "ok"
    assert len(server.requests) == 2 and time.perf_counter() - started < 1.0


def test_server_errors_and_rate_limits_are_retried(serve: Callable[..., Server]) -> None:
    def respond(n: int, body: dict[str, Any], headers: dict[str, str]) -> Answer:
        if n < 2:
            return Answer(status=500 + n * 3, body={"error": {"message": "overloaded"}})
        if n == 2:
            return Answer(status=429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "0.2"})
        return Answer(body=completion("fine"))

    server = serve(respond)
    started = time.perf_counter()
    assert client(server, max_backoff_s=1.0).chat(MESSAGES) == "fine"
    assert len(server.requests) == 4
    assert time.perf_counter() - started >= 0.2  # Retry-After was honoured


@pytest.mark.parametrize("body", ["not json at all", {"choices": []}, {"choices": [{"message": {}}]}, [1, 2]])
def test_malformed_bodies_are_retried_then_raise(serve: Callable[..., Server], body: Any) -> None:
    server = serve(lambda n, b, headers: Answer(body=body))
    with pytest.raises(ModelError, match="HTTP 200 with a malformed body") as err:
        client(server, max_retries=2).chat(MESSAGES)
    assert len(server.requests) == 3
    assert (body if isinstance(body, str) else json.dumps(body)[:10]) in str(err.value)


def test_client_errors_raise_at_once_without_the_key(serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-print")
    server = serve(lambda n, body, headers: Answer(status=401, body={"error": {"message": "invalid api key"}}))
    with pytest.raises(ModelError, match="HTTP 401.*invalid api key") as err:
        client(server).generate([GenRequest(MESSAGES)], SamplingParams())
    assert len(server.requests) == 1
    assert "sk-do-not-print" not in str(err.value)


def test_retries_run_out_with_backoff(serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(openai_compat.time, "sleep", slept.append)
    server = serve(lambda n, body, headers: Answer(status=503, body="down for maintenance"))
    with pytest.raises(ModelError, match="after 5 attempts; last: HTTP 503: down for maintenance"):
        client(server, max_retries=4, backoff=1.0, max_backoff_s=6.0).chat(MESSAGES)
    assert len(slept) == 4
    for i, d in enumerate(slept):  # exponential steps 1, 2, 4, then the cap, each jittered
        assert 0.5 * min(6.0, 2**i) <= d < 1.5 * min(6.0, 2**i)


def test_backoff_jitter_is_seeded(serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve(lambda n, body, headers: Answer(status=500, body="x"))
    runs: list[list[float]] = []
    for seed in (1, 1, 2):
        slept: list[float] = []
        monkeypatch.setattr(openai_compat.time, "sleep", slept.append)
        with pytest.raises(ModelError):
            client(server, max_retries=3, seed=seed).chat(MESSAGES)
        runs.append(slept)
    assert runs[0] == runs[1] != runs[2]


def test_requests_overlap_up_to_the_concurrency(serve: Callable[..., Server]) -> None:
    server = serve(lambda n, body, headers: Answer(body=completion(body["messages"][-1]["content"].upper()), delay_s=0.25))
    requests = [GenRequest([{"role": "user", "content": f"q{i}"}]) for i in range(6)]
    started = time.perf_counter()
    gens = client(server, concurrency=3).generate(requests, SamplingParams(stop=()))
    wall = time.perf_counter() - started
    assert [g.text for g in gens] == [f"Q{i}" for i in range(6)]  # results in request order
    assert server.max_in_flight == 3
    assert wall < 6 * 0.25 * 0.8


def test_chat_json_mode(serve: Callable[..., Server]) -> None:
    server = serve(lambda n, body, headers: Answer(body=completion('{"ok": true}')))
    model = client(server)
    assert json.loads(model.chat(MESSAGES, json_mode=True, temperature=0.0, seed=3)) == {"ok": True}
    assert model.chat(MESSAGES) == '{"ok": true}'
    first, second = server.requests
    assert first["response_format"] == {"type": "json_object"} and first["seed"] == 3
    assert "response_format" not in second and "stop" not in second


def test_load_model_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model("openai:Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:9/v1", concurrency=4)
    assert isinstance(model, OpenAIModel)
    assert (model.url, model.model, model.concurrency) == ("http://127.0.0.1:9/v1/chat/completions",
                                                           "Qwen/Qwen2.5-7B-Instruct", 4)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://example.invalid/v1/")
    assert load_model("openai:gpt-4o-mini").url == "http://example.invalid/v1/chat/completions"
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")
    with pytest.raises(ValueError, match="no model name"):
        load_model("openai:@http://x")
