"""The HTTP client of the teacher (and of any OpenAI-compatible student) against servers
that misbehave, each played by the fake server of tests/fake_teacher_server.py:

- the API key never reaches another origin (redirects) and never appears in a message,
  even when the server echoes it whole or in part;
- one deadline per attempt and one budget per call, whatever the server trickles or holds;
- a reply-size cap;
- garbage replies are the server's fault (`ModelError` after retries); our bugs raise;
- MPS marks a task whose teacher calls failed and carries on; a teacher down for N calls
  in a row stops the run with one line, and a rerun resumes and retries those tasks.

Timeouts are fractions of a second so that every test takes well under 5 s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from score_distill.stages.mps import MentorConfig, mentor
from score_distill.types import MentorRecord
from score_distill.models import openai_compat
from score_distill.models.base import ModelError
from score_distill.models.openai_compat import OpenAIModel
from score_distill.teachers.llm import LLMTeacher
from score_distill.teachers.load import load_teacher
from score_distill.tools.config import ToolConfig
from score_distill.tools.sandbox import SandboxConfig
from score_distill.types import read_jsonl
from tests.fake_teacher_server import FakeReply, FakeServer, all_text, script, system
from tests.mentor_script import make_student, make_task
from tests.test_llm_teacher import STEPS, TASK

KEY_ENV = "FAULTS_TEST_KEY"
KEY = "sk-proj-Zq8rT2vK9mW4xN7pL3sB6yH1cD5fG0"
MESSAGES = [{"role": "user", "content": "2+2?"}]
TOOLS = ToolConfig(sandbox=SandboxConfig(timeout_s=5.0))


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def client(server: FakeServer, **kw: Any) -> OpenAIModel:
    opts = {"timeout_s": 2.0, "max_retries": 1, "backoff": 0.01, "max_backoff_s": 0.02, "api_key_env": KEY_ENV} | kw
    return OpenAIModel(server.url, "fake", **opts)


def fragments(key: str, n: int = 8) -> set[str]:
    return {key[i:i + n] for i in range(len(key) - n + 1)}


def leaks(text: str, key: str = KEY) -> bool:
    return any(f in text for f in fragments(key))


# -- the key stays home -------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_origin_is_not_followed(status: int):
    with FakeServer(lambda r: "stolen") as other:
        redirect = FakeReply(status=status, headers={"Location": other.url + "/chat/completions"})
        with FakeServer(script(redirect)) as server, pytest.raises(ModelError, match="another origin") as err:
            client(server).chat(MESSAGES)
    assert other.seen == []  # not one request, so no Authorization header either
    assert server.hits == 1 and server.seen[0][2]["Authorization"] == f"Bearer {KEY}"
    assert not leaks(str(err.value))


def test_a_same_origin_307_is_followed_with_the_same_post():
    with FakeServer(script(FakeReply(status=307, headers={"Location": "/v1/chat/completions/"}), "fine")) as server:
        assert client(server).chat(MESSAGES) == "fine"
    (m1, p1, h1), (m2, p2, h2) = server.seen
    assert (m1, m2, p1, p2) == ("POST", "POST", "/v1/chat/completions", "/v1/chat/completions/")
    assert server.requests[0] == server.requests[1] and h2["Authorization"] == f"Bearer {KEY}"


def test_a_same_origin_302_and_a_redirect_loop_are_refused():
    with FakeServer(script(FakeReply(status=302, headers={"Location": "/v1/x/chat/completions"}))) as server:
        with pytest.raises(ModelError, match="302 redirect .* not followed"):
            client(server).chat(MESSAGES)
        assert len(server.seen) == 1  # no GET to the new place
    with FakeServer(script(FakeReply(status=308, headers={"Location": "/v1/chat/completions"}))) as server:
        with pytest.raises(ModelError, match="more than 3 redirects"):
            client(server).chat(MESSAGES)
        assert len(server.seen) == 4


@pytest.mark.parametrize("echo", [
    f"Incorrect API key provided: {KEY}. You can find your API key at https://example.invalid/keys.",
    "x" * 260 + f" key={KEY}",  # the excerpt's cut falls inside the key
    f"Incorrect API key provided: {KEY[:14]}***{KEY[-6:]}",  # the server's own partial echo
    f"bad key {quote(KEY + '/+=', safe='')}",  # URL-encoded
])
def test_a_401_echoing_the_key_is_redacted(echo: str, monkeypatch: pytest.MonkeyPatch):
    key = KEY + "/+=" if "%2F" in echo else KEY
    monkeypatch.setenv(KEY_ENV, key)
    body = json.dumps({"error": {"message": echo, "auth": f"Bearer {key}"}})
    with FakeServer(script(FakeReply(status=401, body=body))) as server, \
            pytest.raises(ModelError, match="HTTP 401") as err:
        client(server).chat(MESSAGES)
    assert server.hits == 1 and not leaks(str(err.value), key) and "[redacted]" in str(err.value)


def test_a_key_in_a_redirect_location_is_redacted():
    with FakeServer(lambda r: "x") as other:
        to = f"{other.url}/chat/completions?api_key={KEY}"
        with FakeServer(script(FakeReply(status=302, headers={"Location": to}))) as server, \
                pytest.raises(ModelError) as err:
            client(server).chat(MESSAGES)
    assert not leaks(str(err.value)) and other.seen == []


def test_a_key_a_header_cannot_carry_is_refused_without_printing_it(monkeypatch: pytest.MonkeyPatch):
    with FakeServer(script("fine")) as server:
        monkeypatch.setenv(KEY_ENV, KEY + "\n")  # the newline `$(cat key.txt)` leaves is dropped
        assert client(server).chat(MESSAGES) == "fine" and server.seen[0][2]["Authorization"] == f"Bearer {KEY}"
        monkeypatch.setenv(KEY_ENV, KEY[:20] + "\n" + KEY[20:])
        with pytest.raises(ValueError, match="cannot carry") as err:
            client(server).chat(MESSAGES)
    assert not leaks(str(err.value)) and server.hits == 1


# -- time and size ------------------------------------------------------------------------


def test_a_trickling_body_is_cut_at_the_deadline():
    # 16 bytes every 0.1 s: no single read waits long, the whole reply takes about 3 s.
    # The bounds below leave a loaded machine a wide margin and still tell a cut from a wait.
    with FakeServer(script(FakeReply("y" * 480, trickle_s=0.1))) as server:
        started = time.monotonic()
        with pytest.raises(ModelError, match="no complete reply within timeout_s=0.4"):
            client(server, timeout_s=0.4, max_retries=0).chat(MESSAGES)
    assert time.monotonic() - started < 2.0


def test_a_hanging_server_is_bounded_by_the_call_budget():
    with FakeServer(script(FakeReply(hang=True))) as server:
        started = time.monotonic()
        with pytest.raises(ModelError, match="total_timeout_s=0.9"):
            client(server, timeout_s=0.25, max_retries=50, total_timeout_s=0.9).chat(MESSAGES)
        elapsed = time.monotonic() - started
    assert elapsed < 3.0 and 1 <= server.hits <= 4  # 51 attempts of 0.25 s without the budget


def test_the_default_budget_is_the_attempts_times_the_timeout():
    with FakeServer(script(FakeReply(hang=True))) as server:
        started = time.monotonic()
        with pytest.raises(ModelError, match="timeout_s=0.2"):
            client(server, timeout_s=0.2, max_retries=2).chat(MESSAGES)
    assert time.monotonic() - started < 2.0 and server.hits <= 3


@pytest.mark.parametrize("close_delimited", [False, True])
def test_a_huge_reply_is_not_read_past_the_cap(close_delimited: bool):
    huge = FakeReply("z" * (3 << 20), close_delimited=close_delimited)
    with FakeServer(script(huge)) as server, pytest.raises(ModelError, match="cap of 1048576 bytes"):
        client(server, max_reply_bytes=1 << 20).chat(MESSAGES)
    assert server.hits == 2  # retried once, like any server fault


def test_the_default_cap_refuses_a_9_mib_reply():
    with FakeServer(script(FakeReply("z" * (9 << 20)))) as server, pytest.raises(ModelError, match="cap of 8388608"):
        client(server, max_retries=0).chat(MESSAGES)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan")])
def test_limits_must_be_positive_and_finite(bad: float):
    for name in ("timeout_s", "total_timeout_s", "max_reply_bytes"):
        with pytest.raises(ValueError, match=name):
            OpenAIModel("http://127.0.0.1:9/v1", "fake", **{name: bad})


# -- the server's faults are data, ours raise ---------------------------------------------


@pytest.mark.parametrize("body", ["<html>\n<body>502 Bad Gateway</body>\n</html>", "[" * 100_000, '{"choices": []}',
                                  '{"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": [1]}}',
                                  '{"choices": [{"message": {"content": "hi"}, "logprobs": {"content": '
                                  '[{"logprob": "low"}]}}]}'])
def test_garbage_replies_are_model_errors_after_retries(body: str):
    with FakeServer(script(FakeReply(body=body))) as server, pytest.raises(ModelError, match="malformed body") as err:
        client(server).chat(MESSAGES)
    assert server.hits == 2 and "\n" not in str(err.value)  # one line, whatever the body held


def test_an_empty_reply_is_a_server_fault_for_the_teacher():
    with FakeServer(script("")) as server, pytest.raises(ModelError, match="content is empty"):
        teacher = load_teacher(f"openai:fake@{server.url}", timeout_s=1.0, max_retries=1, backoff=0.01)
        assert isinstance(teacher, LLMTeacher)
        teacher.judge(TASK, STEPS)
    assert server.hits == 2
    with FakeServer(script("")) as server:  # a student may end its turn at once: that is its output
        assert client(server).chat(MESSAGES) == ""


def test_our_bugs_raise_as_themselves(monkeypatch: pytest.MonkeyPatch):
    def broken(body: Any, allow_empty: bool = True) -> Any:
        raise TypeError("a bug of ours")

    monkeypatch.setattr(openai_compat, "parse_completion", broken)
    with FakeServer(script("fine")) as server, pytest.raises(TypeError, match="a bug of ours"):
        client(server).chat(MESSAGES)
    assert server.hits == 1


def test_proxies_from_the_environment_are_used(monkeypatch: pytest.MonkeyPatch):
    with FakeServer(script("via proxy")) as proxy:
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", proxy.url.rsplit("/v1", 1)[0])
        model = OpenAIModel("http://teacher.invalid:8000/v1", "fake", timeout_s=2.0, max_retries=0, api_key_env=KEY_ENV)
        assert model.chat(MESSAGES) == "via proxy"
    [(method, path, headers)] = proxy.seen
    assert path == "http://teacher.invalid:8000/v1/chat/completions" and headers["Host"] == "teacher.invalid:8000"


# -- MPS with a failing teacher -----------------------------------------------------------

FAULTS = {"http_500": FakeReply(status=500, body=f"internal error for key {KEY}"),
          "html": FakeReply(body="<html>\n<h1>Bad gateway</h1>\n</html>"),
          "hang": FakeReply(hang=True),
          "bad_key": FakeReply(status=401, body=json.dumps({"error": f"Incorrect API key provided: {KEY}"}))}


def mps_reply(fault_for: Callable[[dict[str, Any]], bool], fault: FakeReply) -> Callable[[dict[str, Any]], Any]:
    """The teacher of tests/test_mentor.py over HTTP (the judge names step 1, the fix answers),
    with `fault` for the requests `fault_for` picks."""
    def reply(request: dict[str, Any]) -> str | FakeReply:
        if fault_for(request):
            return fault
        if system(request).startswith("You grade"):
            return json.dumps({"is_correct": False, "error_analysis": "step 1 answers 0 without computing",
                               "first_error_step": 1, "suggestion": "multiply the two numbers"})
        return "<thought>Multiply the two numbers.</thought>\n<code>\nfinal_answer(6 * 7)\n</code>"

    return reply


def fast_teacher(spec: str, **kw: Any) -> Any:
    # 2 s per attempt: a good reply from the in-process server never takes that long, even on
    # a loaded machine (0.3 s did, and marked a good task); a hanging one costs 4 s.
    return load_teacher(spec, **kw, timeout_s=2.0, max_retries=1, backoff=0.01, max_backoff_s=0.02, api_key_env=KEY_ENV)


def written(out: Path) -> str:
    return "".join(p.read_bytes().decode("utf-8", "replace") for p in sorted(out.rglob("*"))
                   if p.is_file() and "cache" not in p.parts)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_mps_marks_the_task_whose_teacher_fails_and_a_rerun_retries_it(fault: str, tmp_path: Path,
                                                                        capfd: pytest.CaptureFixture[str]):
    state = {"broken": True}
    tasks = [make_task("stubborn", i) for i in range(3)]
    out, cfg = tmp_path / "out", MentorConfig(tools=TOOLS)
    with FakeServer(mps_reply(lambda r: state["broken"] and "(#1)" in all_text(r), FAULTS[fault])) as server:
        spec = f"openai:fake@{server.url}"
        summary = mentor(make_student(), fast_teacher(spec, tools=TOOLS, cache_dir=tmp_path / "cache"), tasks, out, cfg)
        records = {r.task_id: r for r in read_jsonl(out / "records.jsonl", MentorRecord)}
        assert (summary["solved"], summary["teacher_failed"], summary["teacher_unavailable"]) == (2, 1, 1)
        failed = records["stubborn-1"]
        assert failed.status == "teacher_failed" and failed.reason.startswith("teacher_unavailable: judge: ")
        assert summary["teacher_failure_reasons"] == {"teacher_unavailable": 1}
        assert not leaks(written(out) + "".join(capfd.readouterr()))
        state["broken"] = False  # the teacher is back: the rerun redoes only that task
        again = mentor(make_student(), fast_teacher(spec, tools=TOOLS, cache_dir=tmp_path / "cache"), tasks, out, cfg)
    assert (again["solved"], again["teacher_failed"], again["resumed_tasks"]) == (3, 0, 2)
    assert again["teacher_usage_this_run"]["calls"] == 2  # judge + repair of stubborn-1, nothing else
    assert read_jsonl(out / "records.jsonl", MentorRecord)[-1].task_id == "stubborn-1"


def test_a_teacher_that_is_down_stops_the_command_with_one_line_and_a_rerun_completes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):

    from score_distill.cli import main

    tasks = [make_task("right", 0)] + [make_task("stubborn", i) for i in range(1, 6)]
    (tmp_path / "tasks.jsonl").write_text("".join(
        json.dumps({"id": t.id, "question": t.question, "answer": t.answer, "suite": t.suite}) + "\n" for t in tasks))
    monkeypatch.setattr("score_distill.models.load.load_model", lambda spec, **kw: make_student())
    monkeypatch.setattr("score_distill.teachers.load.load_teacher", fast_teacher)
    state = {"down": True}

    def run_command(url: str) -> int:  # through the entry point, which turns TeacherDown into one line
        return main([
            "mentor", "--student", "scripted", "--teacher", f"openai:fake@{url}", "--tasks", str(tmp_path / "tasks.jsonl"),
            "--teacher-down-after", "2", "--teacher-concurrency", "1", "--tools.sandbox.timeout-s", "5",
            "--out", str(tmp_path / "out")])

    with FakeServer(mps_reply(lambda r: state["down"], FAULTS["http_500"])) as server:
        assert run_command(server.url) == 3
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("score-distill mentor:")]
        assert len(lines) == 1 and err.rstrip().endswith(lines[0]) and "Traceback" not in err
        assert "2 calls in a row" in lines[0] and "HTTP 500" in lines[0] and "rerun the same command" in lines[0]
        assert "1 of 6 tasks done" in lines[0] and not leaks(err)
        assert server.hits == 4  # two calls of two attempts; the tasks after them made no call
        records = read_jsonl(tmp_path / "out" / "records.jsonl", MentorRecord)
        assert [(r.task_id, r.status) for r in records] == [
            ("right-0", "solved"), ("stubborn-1", "teacher_failed"), ("stubborn-2", "teacher_failed")]

        state["down"] = False
        assert run_command(server.url) == 0
        summary = json.loads(capsys.readouterr().out)
        counts = summary["tasks"], summary["solved"], summary["teacher_failed"], summary["resumed_tasks"]
        assert counts == (6, 6, 0, 1)
        hits = server.hits
        assert run_command(server.url) == 0 and server.hits == hits  # done: a third run is a no-op


def test_a_teacher_down_in_any_command_is_one_line_and_exit_3(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # `score-distill run` reaches the teacher through MPS too: the entry point, not each
    # command, turns TeacherDown into its one line.
    from score_distill.cli import main
    from score_distill.commands import run as run_command
    from score_distill.teachers.health import TeacherDown

    def down(args: object) -> int:
        raise TeacherDown("the teacher failed 5 calls in a row (HTTP 503);\nrerun the same command")

    monkeypatch.setattr(run_command, "run", down)
    assert main(["run", "--preset", "smoke"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("score-distill run: the teacher failed 5 calls")
    assert "Traceback" not in err
