"""The LLM teacher end to end over HTTP: `load_teacher("openai:...")` (the real
OpenAI-compatible client) against the fake server of tests/fake_teacher_server.py. Checks
what the server received and how many requests it got: retries of unusable replies, the
answer-leak guard, timeouts and server errors handled by the client, and the call cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from score_distill.models.base import ModelError
from score_distill.teachers.leak import WITHHELD, mentions_answer
from score_distill.teachers.llm import LLMTeacher, TeacherFailure
from score_distill.teachers.load import load_teacher
from score_distill.teachers.reference import ReferenceTeacher
from score_distill.types import Step, Task
from tests.fake_teacher_server import FakeReply, FakeServer, all_text, script
from tests.test_llm_teacher import FINAL, GOOD_STEP, PLAN, STEPS, TASK, WRONG, brain, judge_json, solver


def teacher_for(server: FakeServer, tmp_path: Path | None = None, **client: Any) -> LLMTeacher:
    options = {"timeout_s": 5.0, "max_retries": 2, "backoff": 0.01, **client}
    teacher = load_teacher(f"openai:teacher-model@{server.url}", cache_dir=tmp_path, **options)
    assert isinstance(teacher, LLMTeacher)
    return teacher


def from_messages(request: dict[str, Any]) -> str:
    return brain(request["messages"])


def test_judge_repair_equivalence_through_the_client():
    with FakeServer(from_messages) as server:
        teacher = teacher_for(server)
        verdict = teacher.judge(TASK, STEPS)
        fixed = teacher.repair(TASK, STEPS[:1], STEPS[1], verdict)
        same = teacher.equivalent(TASK, [PLAN], WRONG, FINAL)
    assert (verdict.correct, verdict.first_error, fixed.code, same) == (False, 1, "x = 6 * 7\nprint(x)", False)
    judge, repair, equivalence = server.requests
    assert judge["model"] == "teacher-model" and judge["temperature"] == 0.0
    # The reply's JSON Schema where the endpoint takes one (this fake takes anything).
    assert judge["response_format"]["type"] == "json_schema" and "logprobs" not in judge
    assert judge["response_format"]["json_schema"]["schema"]["required"][0] == "is_correct"
    assert "response_format" not in repair and equivalence["response_format"]["json_schema"]["name"] == "equivalence"
    assert repair["stop"] == ["</first_thought>", "</code>"] and repair["max_tokens"] == 512  # one step, one turn
    assert verdict.tokens > 0 and teacher.usage.tokens >= verdict.tokens and teacher.usage.calls == 3


def test_judge_recovers_from_malformed_json():
    with FakeServer(script("{'is_correct': False}", judge_json(False, 1, "wrong product"))) as server:
        verdict = teacher_for(server).judge(TASK, STEPS)
    assert verdict.first_error == 1 and server.hits == 2
    retry = server.requests[1]["messages"]
    assert retry[-2]["content"] == "{'is_correct': False}" and "malformed" in retry[-1]["content"]


@pytest.mark.parametrize("bad", ["I think step 1 is wrong.", judge_json(False, 7), judge_json(False, None)])
def test_persistent_bad_verdicts_raise_teacher_failure(bad: str):
    with FakeServer(script(bad)) as server:
        teacher = teacher_for(server)
        with pytest.raises(TeacherFailure) as info:
            teacher.judge(TASK, STEPS)
    assert server.hits == 3 and len(info.value.problems) == 3 and teacher.usage.calls == 3


def test_answer_in_the_judge_analysis_never_reaches_the_repair_prompt():
    leaky_verdict = judge_json(False, 1, "The product is 42, step 1 got 48.", "Print 42 instead; it is 42.0.")
    # JSON mode marks the judge's request; the repair request gets a good step.
    with FakeServer(lambda r: leaky_verdict if "response_format" in r else GOOD_STEP) as server:
        teacher = teacher_for(server)
        verdict = teacher.judge(TASK, STEPS)
        teacher.repair(TASK, STEPS[:1], STEPS[1], verdict)
    assert "42" in verdict.analysis  # the judge did state it
    repair_prompt = all_text(server.requests[1])
    assert not mentions_answer(repair_prompt, TASK.answer) and repair_prompt.count(WITHHELD) == 3


def test_repaired_step_stating_the_answer_is_rejected():
    leaky = "<thought>Six times seven is 42.</thought>\n<code>\nx = 42\nprint(x)\n</code>"
    with FakeServer(script(judge_json(False, 1, "wrong product", "multiply correctly"), leaky, GOOD_STEP)) as server:
        teacher = teacher_for(server)
        verdict = teacher.judge(TASK, STEPS)
        fixed = teacher.repair(TASK, STEPS[:1], STEPS[1], verdict)
    assert fixed.code == "x = 6 * 7\nprint(x)" and server.hits == 3
    assert "not shown" in server.requests[2]["messages"][-1]["content"]


def test_slow_reply_times_out_and_the_client_retries():
    good = json.dumps({"equivalent": True, "reason": "same"})
    with FakeServer(script(FakeReply(good, delay_s=1.5), good)) as server:
        teacher = teacher_for(server, timeout_s=0.3)
        assert teacher.equivalent(TASK, [PLAN], WRONG, WRONG) is True
    assert server.hits == 2 and teacher.usage.calls == 1  # one teacher call, two HTTP attempts


def test_server_errors_then_success():
    with FakeServer(script(FakeReply(status=500), FakeReply(status=503), judge_json(True))) as server:
        verdict = teacher_for(server).judge(TASK, STEPS)
    assert verdict.correct and server.hits == 3


def test_a_dead_endpoint_is_a_model_error_not_a_teacher_failure():
    with FakeServer(script(FakeReply(status=500))) as server, pytest.raises(ModelError, match="HTTP 500"):
        teacher_for(server, max_retries=1).judge(TASK, STEPS)
    assert server.hits == 2


def test_cache_prevents_repeated_requests(tmp_path: Path):
    with FakeServer(from_messages) as server:
        first = teacher_for(server, tmp_path)
        verdict = first.judge(TASK, STEPS)
        first.repair(TASK, STEPS[:1], STEPS[1], verdict)
        hits = server.hits
        again = teacher_for(server, tmp_path)
        assert again.judge(TASK, STEPS) == verdict
        again.repair(TASK, STEPS[:1], STEPS[1], verdict)
    assert hits == 2 and server.hits == 2 and again.cache_hits == 2 and again.usage.calls == 0


@pytest.mark.parametrize("honour_stop", [True, False])
def test_solve_through_the_client(honour_stop: bool):
    with FakeServer(from_solver, honour_stop=honour_stop) as server:
        steps = teacher_for(server).solve(TASK)
    assert [s.author for s in steps] == ["teacher"] * 3 and steps[-1].final_answer == "42"
    assert server.requests[0]["stop"] == ["</first_thought>", "</code>"]


def from_solver(request: dict[str, Any]) -> str:
    return solver(request["messages"])


def test_unknown_teacher_spec_raises():
    with pytest.raises(ValueError, match="unknown teacher"):
        load_teacher("gpt-4@nowhere")


def test_reference_teacher_rejects_model_options():
    with pytest.raises(ValueError, match="no model options"):
        load_teacher("reference", timeout_s=3)


def test_repair_of_a_search_task_withholds_a_name():
    task = Task(id="s1", question="Who wrote The Amber Weir?", answer="Mara Quill", suite="search")
    plan = Step(kind="plan", thought="Search for the book, then its author.")
    wrong = Step(kind="action", thought="search", code="print(web_search('Amber'))", observation="Amber Lake: a lake.")
    verdict = judge_json(False, 1, "It searched the lake; the author is mara  quill.", "Search for Mara Quill's book.")
    with FakeServer(script(verdict, GOOD_STEP)) as server:
        teacher = teacher_for(server)
        teacher.repair(task, [plan], wrong, teacher.judge(task, [plan, wrong]))
    assert "quill" not in all_text(server.requests[1]).lower()


def test_reference_spec_gives_the_reference_teacher(tmp_path: Path):
    teacher = load_teacher("reference", tools=None, cache_dir=tmp_path)
    assert isinstance(teacher, ReferenceTeacher) and not list(tmp_path.iterdir())


def test_a_broken_reply_body_is_retried_by_the_client():
    with FakeServer(script(FakeReply(body="<html>bad gateway</html>"), judge_json(True))) as server:
        assert teacher_for(server).judge(TASK, STEPS).correct
    assert server.hits == 2


def refusing(forms: set[str], status: int = 400, body: str = "") -> Any:
    """A server that answers the response_format forms in `forms` with an error."""

    def reply(request: dict[str, Any]) -> str | FakeReply:
        fmt = request.get("response_format", {})
        form = fmt.get("type", "") + ("+schema" if "schema" in fmt else "")
        if form in forms:
            return FakeReply(status=status, body=body or None)
        return from_messages(request)

    return reply


def formats(server: FakeServer) -> list[str | None]:
    return [None if "response_format" not in r else r["response_format"]["type"]
            + ("+schema" if "schema" in r["response_format"] else "") for r in server.requests]


def test_an_endpoint_that_refuses_a_json_schema_gets_the_schema_in_a_json_object_from_then_on():
    with FakeServer(refusing({"json_schema"})) as server:  # an older server: response_format json_schema unknown
        teacher = teacher_for(server)
        verdict = teacher.judge(TASK, STEPS)
        same = teacher.equivalent(TASK, [PLAN], WRONG, FINAL)
    assert (verdict.correct, verdict.first_error, same) == (False, 1, False)
    assert formats(server) == ["json_schema", "json_object+schema", "json_object+schema"]  # refused once, remembered
    assert server.requests[1]["response_format"]["schema"]["required"][0] == "is_correct"


def test_a_server_error_naming_response_format_is_a_refusal_not_retried():
    # llama-cpp-python's server answers an unknown response_format type with HTTP 500 naming the field.
    body = ('{"error": {"message": "1 validation error: loc (body, response_format, type): '
            'Input should be text or json_object"}}')
    with FakeServer(refusing({"json_schema"}, status=500, body=body)) as server:
        verdict = teacher_for(server).judge(TASK, STEPS)
    assert verdict.first_error == 1 and formats(server) == ["json_schema", "json_object+schema"]


def test_an_endpoint_that_refuses_every_schema_form_gets_plain_json_objects():
    with FakeServer(refusing({"json_schema", "json_object+schema"}, status=422)) as server:
        teacher = teacher_for(server)
        assert teacher.judge(TASK, STEPS).first_error == 1
        assert teacher.equivalent(TASK, [PLAN], WRONG, FINAL) is False
    assert formats(server) == ["json_schema", "json_object+schema", "json_object", "json_object"]


def test_a_plain_server_error_is_still_retried_with_the_same_form():
    with FakeServer(script(FakeReply(status=503), judge_json(True))) as server:
        assert teacher_for(server).judge(TASK, STEPS).correct
    assert formats(server) == ["json_schema", "json_schema"]
