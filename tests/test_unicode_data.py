"""Text from a model, a tool or a server is data: any string is stored (lone surrogates become
U+FFFD, `storage.safe_text`) and never stops a run. Records, the teacher cache and its keys,
the sandbox and its pipe, evaluation and MPS are each driven with such text."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from score_distill.agent.rollout import RolloutConfig
from score_distill.evaluate import evaluate
from score_distill.stages.mps import MentorConfig, mentor
from score_distill.stages.split import SplitConfig, write_split
from score_distill.types import MentorRecord
from score_distill.models.scripted import ScriptedModel
from score_distill.storage import dumps, safe_text
from score_distill.teachers.cache import CachedReply, TeacherCache, call_key
from score_distill.teachers.llm import ChatReply, LLMTeacher
from score_distill.teachers.prompts import JUDGE_SYSTEM
from score_distill.tools.config import ToolConfig
from score_distill.tools.sandbox import Sandbox, SandboxConfig
from score_distill.tools.sandbox_child import decode_frames, encode_message
from score_distill.types import Step, Task, Trajectory, read_jsonl, write_jsonl

TOOLS = ToolConfig(sandbox=SandboxConfig(timeout_s=5.0))
LONE = ["\udcff", "\ud800", "x\udfffy", "\ud83d", "\ude00\ud83d"]  # low, high, reversed pair: all lone
ODD = ["\x00", "a\x00b", "\uffff", "\ufffe", "\u202eabc\u202c", "\u200f\u05d0", "e\u0301\u0301\u0301",
       "\U0001f600", "\r\n\t\x1b[31m", "x" * 1_000_000, ("line " * 50_000).strip(), "\u2028\u2029\x85"]


def test_the_rule():
    assert [safe_text(s) for s in LONE] == ["\ufffd", "\ufffd", "x\ufffdy", "\ufffd", "\ufffd\ufffd"]
    assert safe_text("\ud83d\ude00") == "\U0001f600"  # a pair written as two code points is its character
    assert all(safe_text(s) is s for s in ODD)  # anything UTF-8 can encode is kept as it is


def trajectory(text: str) -> Trajectory:
    step = Step(kind="action", thought=text, code=f"print('{text}')", observation=text, final_answer=text)
    return Trajectory(task_id=f"t-{text}", steps=[Step(kind="plan", thought=text), step], final_answer=text,
                      meta={text: [text], "question": text})


def test_records_round_trip_any_text(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    texts = LONE + ODD
    assert write_jsonl(path, [trajectory(t) for t in texts]) == len(texts)
    path.read_bytes().decode("utf-8")  # the file is plain UTF-8
    back = read_jsonl(path, Trajectory)
    assert back == [trajectory(safe_text(t)) for t in texts]
    write_jsonl(path, back, append=True)  # appending works the same way
    assert read_jsonl(path, Trajectory) == back + back
    assert Trajectory.from_json(trajectory("\udcff").to_json()) == trajectory("\ufffd")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.characters()),
                max_size=40).map("".join))  # surrogates (lone, or next to each other as pairs) among any text
def test_any_text_is_stored_once_and_for_all(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("h") / "t.jsonl"
    write_jsonl(path, [trajectory(text)])
    [back] = read_jsonl(path, Trajectory)
    assert back == trajectory(safe_text(text))
    write_jsonl(path, [back])
    assert read_jsonl(path, Trajectory) == [back]  # stable: a record read back is written as it is
    json.loads(dumps({"k": text}))


def test_teacher_cache_stores_and_keys_any_text(tmp_path: Path):
    messages = [{"role": "user", "content": "step \udcff and \ud800"}]
    key = call_key("v1", "m", messages, {"temperature": 0.0})
    # The key of text as it is stored: the same call after a reload hits the cache.
    assert key == call_key("v1", "m", [{"role": "user", "content": "step \ufffd and \ufffd"}], {"temperature": 0.0})
    cache = TeacherCache(tmp_path)
    for i, text in enumerate(LONE + ODD[:9]):
        cache.put(f"{key}{i}", CachedReply(text, tokens=i, finish_reason="stop\ud800"))
        assert cache.get(f"{key}{i}") == CachedReply(safe_text(text), i, "stop\ufffd")
    (tmp_path / "teacher_calls.jsonl").read_bytes().decode("utf-8")
    again = TeacherCache(tmp_path)
    assert len(again) == len(LONE) + 9
    assert all(again.get(f"{key}{i}") == cache.get(f"{key}{i}") for i in range(len(again)))


def test_pipe_frames_carry_any_text():
    message = {"op": "done", "error": "E\ud800", "final_answer": "\udcff\x00\uffff\U0001f600"}
    frame = bytearray(encode_message(message))
    assert decode_frames(frame) == [message]


def test_sandbox_cell_that_prints_and_answers_a_surrogate():
    with Sandbox(TOOLS.sandbox) as box:
        r = box.run("s = b'\\xff'.decode('utf-8', 'surrogateescape')\nprint('out', s)\nfinal_answer(s)")
        assert r.error is None and r.final_answer == "\ufffd" and r.output == "out \\udcff\n"
        r = box.run("final_answer('\\ud800' + 'x' + chr(0xDFFF) + chr(0xD83D) + chr(0xDE00))")
        assert r.final_answer == "\ufffdx\ufffd\U0001f600"
        r = box.run("raise ValueError('bad \\udcff')")
        assert r.error == "ValueError: bad \ufffd"
        r = box.run("final_answer('a\udcffb')")  # a lone surrogate in the code itself
        assert r.error is None and r.final_answer == "a\ufffdb"
        r = box.run("print('\\x00\\uffff\\u202e' + 'e\\u0301')")
        assert r.output == "\x00\uffff\u202ee\u0301\n"


def surrogate_student(messages):
    if sum(m["role"] == "assistant" for m in messages) == 0:
        return "<first_thought>plan \udcff</first_thought>"  # a backend may return such text
    return "<thought>answer \ud800</thought>\n<code>\nfinal_answer(b'\\xff'.decode('utf-8', 'surrogateescape'))\n</code>"


def test_eval_with_a_surrogate_answer_writes_its_trajectory_and_resumes(tmp_path: Path):
    tasks = [Task(id="t0", question="what is six times seven?", answer="42", suite="math"),
             Task(id="t1", question="q \udcff", answer="\ud800", suite="search")]
    metrics = evaluate(ScriptedModel(surrogate_student), tasks, tmp_path, TOOLS, RolloutConfig())
    assert metrics["n"] == 2 and metrics["finish_rate"] == 1.0
    trajs = read_jsonl(tmp_path / "trajectories.jsonl", Trajectory)
    assert [t.final_answer for t in trajs] == ["\ufffd", "\ufffd"] and all(t.finished for t in trajs)
    assert trajs[0].steps[0].thought == "plan \ufffd" and trajs[0].steps[1].thought == "answer \ufffd"
    model = ScriptedModel(surrogate_student)
    assert evaluate(model, tasks, tmp_path, TOOLS, RolloutConfig())["n"] == 2
    assert model.batch_sizes == []  # resumed from the file: nothing ran again
    json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))


def teacher_reply(messages) -> str:
    """Replies that hold lone surrogates as characters (not JSON escapes)."""
    if messages[0]["content"] == JUDGE_SYSTEM:
        return json.dumps({"is_correct": False, "error_analysis": "step 1 answers \ud800", "first_error_step": 1,
                           "suggestion": "compute six times seven \udcff"}, ensure_ascii=False)
    return "<thought>fix \ud800</thought>\n<code>\nfinal_answer(6 * 7)\n</code>"


def test_mentor_with_surrogates_from_student_and_teacher(tmp_path: Path):
    calls = []

    def chat(messages, options):
        calls.append(messages)
        return ChatReply(teacher_reply(messages), tokens=5)

    tasks = [Task(id=f"t{i}", question=f"what is six times seven? ({i})", answer="42", suite="math") for i in range(2)]
    cfg = MentorConfig(tools=TOOLS, max_interventions=1)
    out = tmp_path / "mps"

    def run() -> list[MentorRecord]:
        teacher = LLMTeacher(chat, model="m", cache_dir=out / "teacher-cache", tools=TOOLS)
        summary = mentor(ScriptedModel(surrogate_student), teacher, tasks, out, cfg)
        assert summary["tasks"] == 2 and summary["solved"] == 2
        return read_jsonl(out / "records.jsonl", MentorRecord)

    records = run()
    write_split(records, out / "export", SplitConfig())
    [iv] = records[0].interventions
    assert iv.mistaken.thought == "answer \ufffd" and iv.mistaken.final_answer == "\ufffd"
    assert iv.fixed.thought == "fix \ufffd" and iv.fixed.final_answer == "42" and iv.analysis == "step 1 answers \ufffd"
    for name in ("records.jsonl", "mps_trajectories.jsonl", "keysteps.jsonl", "teacher-cache/teacher_calls.jsonl",
                 "export/sft_trl.jsonl", "export/sft_sharegpt.jsonl"):
        (out / name).read_bytes().decode("utf-8")
    # Records lost: the rerun is answered by the teacher cache alone and writes the same records.
    n_calls = len(calls)
    (out / "records.jsonl").unlink()
    assert untimed(run()) == untimed(records) and len(calls) == n_calls


def untimed(records: list[MentorRecord]) -> list[MentorRecord]:
    """The records by task id, without their timings (which differ between runs)."""
    for r in records:
        r.trajectory.model_time_s = r.trajectory.tool_time_s = 0.0
    return sorted(records, key=lambda r: r.task_id)
