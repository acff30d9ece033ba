"""The LLM teacher: judge / repair / equivalence validation and retries, the answer-leak
guard, the call cache, and solving through the shared rollout. A plain Python chat
function plays the model here; test_llm_teacher_http.py drives the same teacher through
the OpenAI-compatible client and a fake server."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Callable

import pytest

from score_distill.teachers.base import Verdict
from score_distill.teachers.cache import CACHE_FILE, CacheError, CachedReply, TeacherCache
from score_distill.teachers.leak import WITHHELD, mentions_answer
from score_distill.teachers.llm import ChatOptions, ChatReply, LLMTeacher, LLMTeacherConfig, TeacherFailure
from score_distill.teachers.prompts import EQUIVALENCE_SYSTEM, JUDGE_SYSTEM, PLAN_SHAPE
from score_distill.types import Step, Task

Messages = list[dict[str, str]]

TASK = Task(id="t1", question="What is 6 * 7?", answer="42", suite="math")
PLAN = Step(kind="plan", thought="Multiply the two numbers.")
WRONG = Step(kind="action", thought="Multiply.", code="x = 6 * 8\nprint(x)", observation="48")
FINAL = Step(kind="action", thought="Answer.", code="final_answer(x)", observation="(no output)", final_answer="48")
STEPS = [PLAN, WRONG, FINAL]
GOOD_STEP = "<thought>Multiply six by seven.</thought>\n<code>\nx = 6 * 7\nprint(x)\n</code>"
WRONG_VERDICT = Verdict(correct=False, first_error=1, analysis="Step 1 multiplies by 8; the result must be 42.",
                        suggestion="Multiply by 7 to get 42.0 instead.")


def judge_json(correct: bool, step: object = None, analysis: str = "ok", suggestion: str = "") -> str:
    return json.dumps({"is_correct": correct, "error_analysis": analysis, "first_error_step": step,
                       "suggestion": suggestion})


def grab(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in the prompt"
    return match.group(1)


def brain(messages: Messages) -> str:
    """A competent teacher: answers each kind of prompt correctly by reading it."""
    system, user = messages[0]["content"], messages[-1]["content"]
    if system == JUDGE_SYSTEM:
        gold, final = grab(r"Gold answer: (.*)", user), grab(r"final answer: (.*)", user)
        if final == gold:
            return judge_json(True)
        return judge_json(False, 1, f"Step 1 multiplies by 8, so the answer is not {gold}.", f"Compute 6 * 7 = {gold}.")
    if system == EQUIVALENCE_SYSTEM:
        a, b = user.split("Step A", 1)[1].split("Step B", 1)
        obs = [grab(r"Observation: (.*)", part) for part in (a, b)]
        return json.dumps({"equivalent": obs[0] == obs[1], "reason": "compared the results"})
    if "<first_thought>" in user.split("Write step", 1)[1]:
        return "<first_thought>Multiply six by seven, then answer.</first_thought>"
    return GOOD_STEP


class Chat:
    """A chat function that records every call; `reply` maps messages to text."""

    def __init__(self, reply: Callable[[Messages], str] = brain, tokens: int = 10):
        self.reply, self.tokens = reply, tokens
        self.calls: list[tuple[Messages, ChatOptions]] = []
        self._lock = threading.Lock()

    def __call__(self, messages: Messages, options: ChatOptions) -> ChatReply:
        with self._lock:
            self.calls.append((messages, options))
        return ChatReply(self.reply(messages), tokens=self.tokens)


def replies(*texts: str) -> Callable[[Messages], str]:
    """Reply with `texts` in order, repeating the last."""
    state = {"i": 0}

    def reply(_: Messages) -> str:
        text = texts[min(state["i"], len(texts) - 1)]
        state["i"] += 1
        return text

    return reply


def prompt_text(messages: Messages) -> str:
    return "\n".join(m["content"] for m in messages)


# -- judge -------------------------------------------------------------------------------


def test_judge_names_first_error_with_the_gold_answer_in_view():
    chat = Chat()
    teacher = LLMTeacher(chat, model="m")
    verdict = teacher.judge(TASK, STEPS)
    assert (verdict.correct, verdict.first_error, verdict.tokens) == (False, 1, 10)
    [(messages, options)] = chat.calls
    shown = prompt_text(messages)
    assert "Gold answer: 42" in shown and "The agent's final answer: 48" in shown
    assert all(f"[step {i}]" in shown for i in range(3)) and "Observation: 48" in shown
    assert options.json_mode and options.temperature == 0.0


def test_judge_accepts_a_correct_trajectory():
    final = Step(kind="action", thought="a", code="final_answer(42)", observation="(no output)", final_answer="42")
    verdict = LLMTeacher(Chat(), model="m").judge(TASK, [PLAN, final])
    assert verdict.correct and verdict.first_error is None


def test_judge_cuts_long_observations_to_the_bound():
    chat = Chat()
    noisy = Step(kind="action", thought="t", code="print('x' * 50000)", observation="x" * 50000)
    LLMTeacher(chat, model="m", config=LLMTeacherConfig(max_observation_chars=300)).judge(TASK, [PLAN, noisy, FINAL])
    shown = prompt_text(chat.calls[0][0])
    assert "characters cut" in shown and len(shown) < 6000


def test_judge_retries_malformed_json_then_recovers():
    chat = Chat(replies("Sure! The verdict is: wrong", judge_json(False, 2, "premature answer")))
    teacher = LLMTeacher(chat, model="m")
    verdict = teacher.judge(TASK, STEPS)
    assert verdict.first_error == 2 and verdict.tokens == 20
    retry = chat.calls[1][0]
    assert retry[-2] == {"role": "assistant", "content": "Sure! The verdict is: wrong"}
    assert "no JSON object" in retry[-1]["content"]
    assert teacher.usage.calls == 2 and teacher.usage.by_op == {"judge": 2}


@pytest.mark.parametrize("bad, problem", [
    ('{"is_correct": false, "first_error_step": 1', "malformed"),
    ('{"is_correct": false, "first_error_step": 1, "suggestion": ""}', 'missing key "error_analysis"'),
    (judge_json(False, 3), "out of range"),
    (judge_json(False, -1), "out of range"),
    (judge_json(False, None), "must be a step number"),
    (judge_json(False, True), "must be an integer"),
    (judge_json(False, "1"), "must be an integer"),
    ('{"is_correct": "no", "error_analysis": "", "first_error_step": 1, "suggestion": ""}', "true or false"),
])
def test_judge_persistent_bad_reply_raises_teacher_failure(bad: str, problem: str):
    chat = Chat(replies(bad))
    with pytest.raises(TeacherFailure) as info:
        LLMTeacher(chat, model="m").judge(TASK, STEPS)
    failure = info.value
    assert (failure.op, failure.task_id, len(chat.calls)) == ("judge", "t1", 3)
    assert len(failure.problems) == 3 and problem in failure.problems[0]
    assert failure.replies == [bad] * 3
    assert problem in chat.calls[2][0][-1]["content"]  # each retry says what was wrong


def test_a_reply_cut_at_the_token_cap_is_retried_with_a_note():
    cut = judge_json(False, 1, "a long analysis " * 50)[:300]
    calls: list[Messages] = []

    def chat(messages: Messages, options: ChatOptions) -> ChatReply:
        calls.append(messages)
        return ChatReply(cut, 300, "length") if len(calls) == 1 else ChatReply(judge_json(False, 1), 20)

    assert LLMTeacher(chat, model="m").judge(TASK, STEPS).tokens == 320
    assert "token limit" in calls[1][-1]["content"]


def test_retry_count_is_configurable():
    chat = Chat(replies(judge_json(False, 9)))
    with pytest.raises(TeacherFailure):
        LLMTeacher(chat, model="m", config=LLMTeacherConfig(retries=0)).judge(TASK, STEPS)
    assert len(chat.calls) == 1


def test_judge_of_no_steps_is_our_bug():
    with pytest.raises(ValueError, match="no steps"):
        LLMTeacher(Chat(), model="m").judge(TASK, [])


# -- repair ------------------------------------------------------------------------------


def test_repair_writes_one_action_step_without_seeing_the_answer():
    chat = Chat()
    step = LLMTeacher(chat, model="m").repair(TASK, [PLAN], WRONG, WRONG_VERDICT)
    assert (step.kind, step.author, step.code, step.observation) == ("action", "teacher", "x = 6 * 7\nprint(x)", "")
    [(messages, options)] = chat.calls
    shown = prompt_text(messages)
    assert not mentions_answer(shown, "42"), "the gold answer reached the repair prompt"
    assert shown.count(WITHHELD) == 2 and "Step 1 multiplies by 8" in shown
    assert "x = 6 * 8" in shown and "Write step 1 now" in shown and not options.json_mode


def test_repair_of_the_first_thought_writes_a_plan():
    chat = Chat()
    verdict = Verdict(correct=False, first_error=0, analysis="bad plan", suggestion="multiply")
    step = LLMTeacher(chat, model="m").repair(TASK, [], PLAN, verdict)
    assert step.kind == "plan" and step.thought.startswith("Multiply six") and step.code == ""
    assert PLAN_SHAPE in prompt_text(chat.calls[0][0])


def test_repair_rejects_a_step_that_states_an_unseen_answer():
    leaky = "<thought>The product is 42.</thought>\n<code>\nprint(42)\n</code>"
    chat = Chat(replies(leaky, GOOD_STEP))
    step = LLMTeacher(chat, model="m").repair(TASK, [PLAN], WRONG, WRONG_VERDICT)
    assert step.code == "x = 6 * 7\nprint(x)" and len(chat.calls) == 2 and step.n_tokens == 20
    assert "not shown" in chat.calls[1][0][-1]["content"]


def test_repair_rejects_a_literal_unseen_final_answer_until_it_fails():
    chat = Chat(replies("<thought>Done.</thought>\n<code>\nfinal_answer(42)\n</code>"))
    with pytest.raises(TeacherFailure) as info:
        LLMTeacher(chat, model="m").repair(TASK, [PLAN, WRONG], FINAL, WRONG_VERDICT)
    assert info.value.op == "repair" and len(chat.calls) == 3


def test_repair_may_state_an_answer_the_prefix_has_shown():
    shown = Step(kind="action", thought="t", code="y = 6 * 7\nprint(y)", observation="42")
    chat = Chat(replies("<thought>It printed 42.</thought>\n<code>\nfinal_answer(42)\n</code>"))
    step = LLMTeacher(chat, model="m").repair(TASK, [PLAN, shown], FINAL, WRONG_VERDICT)
    assert step.code == "final_answer(42)" and len(chat.calls) == 1


def test_repair_parse_error_is_retried():
    chat = Chat(replies("Here is the fix: x = 6 * 7", GOOD_STEP))
    LLMTeacher(chat, model="m").repair(TASK, [PLAN], WRONG, WRONG_VERDICT)
    assert len(chat.calls) == 2 and "agent's format" in chat.calls[1][0][-1]["content"]


# -- equivalence -------------------------------------------------------------------------


def test_equivalence_compares_thought_code_and_result():
    chat = Chat()
    teacher = LLMTeacher(chat, model="m")
    same = Step(kind="action", thought="times", code="z = 7 * 6\nprint(z)", observation="48")
    other = Step(kind="action", thought="times", code="z = 6 * 7\nprint(z)", observation="42")
    assert teacher.equivalent(TASK, [PLAN], WRONG, same) is True
    assert teacher.equivalent(TASK, [PLAN], WRONG, other) is False
    shown = prompt_text(chat.calls[1][0])
    assert "x = 6 * 8" in shown and "z = 6 * 7" in shown and "Gold answer" not in shown
    assert teacher.usage.by_op == {"equivalent": 2}


def test_equivalence_bad_replies_raise_teacher_failure():
    chat = Chat(replies('{"equivalent": "yes", "reason": "x"}', '{"reason": "x"}', "maybe"))
    with pytest.raises(TeacherFailure) as info:
        LLMTeacher(chat, model="m").equivalent(TASK, [PLAN], WRONG, FINAL)
    assert [p.split(",")[0][:20] for p in info.value.problems] == [
        '"equivalent" must be', 'missing key "equival', "no JSON object found"]


# -- cache and usage ---------------------------------------------------------------------


def run_all(teacher: LLMTeacher) -> tuple[Verdict, Step, bool]:
    verdict = teacher.judge(TASK, STEPS)
    return verdict, teacher.repair(TASK, [PLAN], WRONG, verdict), teacher.equivalent(TASK, [PLAN], WRONG, FINAL)


def test_rerun_with_a_cache_makes_no_calls(tmp_path: Path):
    first = LLMTeacher(Chat(tokens=7), model="m", cache_dir=tmp_path)
    results = run_all(first)
    assert (first.usage.calls, first.usage.tokens, first.cache_hits) == (3, 21, 0)

    def no_calls(messages: Messages) -> str:
        raise AssertionError("a cached call reached the model")

    again = LLMTeacher(Chat(no_calls), model="m", cache_dir=tmp_path)
    assert run_all(again) == results  # Verdict.tokens included: records replay identically
    assert (again.usage.calls, again.usage.tokens, again.cache_hits) == (0, 0, 3)


def test_cache_key_covers_model_and_options(tmp_path: Path):
    LLMTeacher(Chat(), model="m", cache_dir=tmp_path).judge(TASK, STEPS)
    other_model = LLMTeacher(Chat(), model="m2", cache_dir=tmp_path)
    other_model.judge(TASK, STEPS)
    warmer = LLMTeacher(Chat(), model="m", cache_dir=tmp_path, config=LLMTeacherConfig(judge_temperature=0.2))
    warmer.judge(TASK, STEPS)
    assert other_model.usage.calls == 1 and warmer.usage.calls == 1
    assert len(TeacherCache(tmp_path)) == 3


def test_cache_survives_a_torn_last_line(tmp_path: Path):
    cache = TeacherCache(tmp_path)
    cache.put("a", CachedReply("first", 3))
    with (tmp_path / CACHE_FILE).open("a") as f:
        f.write('{"schema": 1, "key": "b", "te')  # the process died mid-write
    reopened = TeacherCache(tmp_path)
    assert reopened.get("a") == CachedReply("first", 3) and reopened.get("b") is None
    reopened.put("c", CachedReply("third", 5))
    assert TeacherCache(tmp_path).get("c") == CachedReply("third", 5)
    assert all(json.loads(line) for line in (tmp_path / CACHE_FILE).read_text().splitlines())


def test_cache_corruption_inside_the_file_raises(tmp_path: Path):
    cache = TeacherCache(tmp_path)
    cache.put("a", CachedReply("first", 3))
    with (tmp_path / CACHE_FILE).open("a") as f:
        f.write("garbage\n")
    with pytest.raises(CacheError, match=":2: not JSON"):
        TeacherCache(tmp_path)


def test_concurrent_calls_share_one_cache(tmp_path: Path):
    chat = Chat()
    teacher = LLMTeacher(chat, model="m", cache_dir=tmp_path)
    tasks = [Task(id=f"t{i}", question=f"What is 6 * 7 + {i}?", answer="42", suite="math") for i in range(8)]
    threads = [threading.Thread(target=teacher.judge, args=(t, STEPS)) for t in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert teacher.usage.calls == len(chat.calls) == 8 and teacher.usage.tokens == 80
    assert len((tmp_path / CACHE_FILE).read_text().splitlines()) == 8


# -- solving through the shared rollout ----------------------------------------------------


def solver(messages: Messages) -> str:
    """The teacher as an agent. Turn 1 runs on past its step (an invented observation and
    more), and turn 2 lacks its closing tag, as when a server drops the stop string."""
    turn = sum(m["role"] == "assistant" for m in messages)
    return ["<first_thought>Multiply, then answer.</first_thought>",
            "<thought>Multiply.</thought>\n<code>\nx = 6 * 7\nprint(x)\n</code>\nObservation: 41\n<thought>",
            "<thought>Answer.</thought>\n<code>\nfinal_answer(x)\n"][min(turn, 2)]


def test_solve_runs_the_teacher_as_an_agent_in_the_sandbox():
    chat = Chat(solver)
    teacher = LLMTeacher(chat, model="m")
    steps = teacher.solve(TASK)
    assert [s.kind for s in steps] == ["plan", "action", "action"]
    assert all(s.author == "teacher" and s.ok for s in steps)
    assert steps[1].observation == "42" and steps[2].final_answer == "42"
    options = [o for _, o in chat.calls]
    assert all("</code>" in o.stop and not o.json_mode for o in options)
    assert len({o.seed for o in options}) == 3  # one seed per turn
    assert "Observation: 42" in chat.calls[2][0][-1]["content"]  # the real output, not the invented one
    assert teacher.usage.by_op == {"solve": 3}


def test_solve_many_replays_from_the_cache(tmp_path: Path):
    tasks = [TASK, Task(id="t2", question="What is 7 * 6?", answer="42", suite="math")]
    first = LLMTeacher(Chat(solver), model="m", cache_dir=tmp_path)
    solved = first.solve_many(tasks)
    assert [s[-1].final_answer for s in solved] == ["42", "42"] and first.usage.calls == 6

    def no_calls(messages: Messages) -> str:
        raise AssertionError("a cached call reached the model")

    again = LLMTeacher(Chat(no_calls), model="m", cache_dir=tmp_path)
    assert again.solve_many(tasks) == solved and again.cache_hits == 6


# -- every token a teacher call spends is counted ------------------------------------------


def test_a_solution_carries_what_each_of_its_calls_cost_and_bc_records_it(tmp_path: Path):
    from score_distill.stages.bc import BCConfig, collect_bc
    from score_distill.tools.config import ToolConfig
    from score_distill.tools.sandbox import SandboxConfig

    teacher = LLMTeacher(Chat(solver, tokens=17), model="m")
    steps = teacher.solve(TASK)
    assert [s.n_tokens for s in steps] == [17, 17, 17]  # prompt + completion of each turn's call
    tools = ToolConfig(sandbox=SandboxConfig(timeout_s=5.0))
    summary = collect_bc(LLMTeacher(Chat(solver, tokens=17), model="m"), [TASK], tmp_path, BCConfig(fraction=1.0, tools=tools))
    assert summary["kept"] == 1 and summary["teacher_tokens"] == 3 * 17


def test_a_failing_teacher_still_costs_its_tokens_in_every_record(tmp_path: Path):
    from score_distill.models.scripted import ScriptedModel
    from score_distill.stages.bc import BCConfig, collect_bc
    from score_distill.stages.mps import MentorConfig, mentor
    from score_distill.tools.config import ToolConfig
    from score_distill.tools.sandbox import SandboxConfig

    tools = ToolConfig(sandbox=SandboxConfig(timeout_s=5.0))
    garbage = LLMTeacher(Chat(lambda m: "not json at all", tokens=11), model="m", config=LLMTeacherConfig(retries=2))
    with pytest.raises(TeacherFailure) as failure:
        garbage.judge(TASK, STEPS)
    assert failure.value.tokens == 3 * 11  # three attempts
    # MPS: the judge fails on a wrong trajectory; the record says what the attempts cost.
    wrong = "<thought>guess</thought>\n<code>\nfinal_answer(48)\n</code>"
    student = ScriptedModel(lambda m: "<first_thought>guess</first_thought>" if len(m) == 2 else wrong)
    summary = mentor(student, LLMTeacher(Chat(lambda m: "not json", tokens=11), model="m"), [TASK],
                     tmp_path / "mps", MentorConfig(tools=tools))
    assert summary["teacher_failed"] == 1 and summary["teacher_tokens"] == 3 * 11
    # BC: a solve whose every turn is cut off spends its calls; a teacher that cannot even
    # finish a solution is still paid for.
    bc = collect_bc(LLMTeacher(Chat(lambda m: "no tags here", tokens=5), model="m"), [TASK], tmp_path / "bc",
                    BCConfig(fraction=1.0, tools=tools, max_turns=3))
    assert bc["kept"] == 0 and bc["teacher_tokens"] > 0
