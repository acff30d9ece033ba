"""Task files are checked in full before any work: each problem is one line naming file,
line and field; the commands print them, exit 2 and write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from score_distill.tasks.load import generate_suite, load_tasks, read_task_file
from score_distill.tasks.validate import Limits, TaskFileError, check_task_file
from score_distill.types import SchemaError, write_jsonl

GOOD = {"id": "q1", "question": "What is 2 + 2?", "answer": "4"}


def line(**fields: object) -> str:
    """A task line: GOOD with `fields` changed (a value of ... drops the field)."""
    data = {**GOOD, **fields}
    return json.dumps({k: v for k, v in data.items() if v is not ...})


DOCS = '{"id": "a", "title": "Tarsholm", "text": "Tarsholm is a city."}\n'

# (name, file bytes, corpus file bytes or None, the start of the expected problem line)
BAD = [
    ("missing id", line(id=...), None, "T:1: id: missing"),
    ("missing question", line(question=...), None, "T:1: question: missing"),
    ("empty question", line(question="  "), None, "T:1: question: empty"),
    ("not JSON", line() + "\n{'id': 'q2'}", None, "T:2: not JSON: Expecting property name"),
    ("NaN", line(id="q2").replace('"4"', "NaN"), None, "T:1: not JSON: NaN is not a JSON value"),
    ("a BOM inside", line() + "\n\ufeff" + line(id="q2"), None, "T:2: a byte-order mark (U+FEFF) starts this line"),
    ("nested too deeply", "[" * 100_000, None, "T:1: not JSON: nested too deeply"),
    ("a huge integer", line(id="q2").replace('"4"', "9" * 5000), None, "T:1: not JSON: Exceeds the limit (4300 digits)"),
    ("a lone surrogate", line(question="\ud800?"), None, "T:1: question: holds a lone surrogate '\\ud800' at character 1"),
    ("not an object", '["q1", "2 + 2", "4"]', None, "T:1: expected a JSON object (one task), got a list"),
    ("duplicate ids", line() + "\n" + line(id="q2") + "\n" + line(), None, "T:3: id: duplicate 'q1' (first on line 1)"),
    ("a key twice", '{"id": "a", "id": "b", "question": "q", "answer": "4"}', None, "T:1: id: the key appears twice"),
    ("unknown field", line(colour="red"), None, "T:1: colour: unknown field"),
    ("schema 2", line(schema=2), None, "T:1: schema: version 2 is not supported"),
    ("schema true", line(schema=True), None, "T:1: schema: version True is not supported"),
    ("meta a string", line(meta="math"), None, "T:1: meta: must be an object, got the string 'math'"),
    ("id an int", line(id=7), None, 'T:1: id: must be a string, got the number 7 (write it as "7")'),
    ("id empty", line(id=""), None, "T:1: id: empty"),
    ("answer null", line(answer=None), None, "T:1: answer: null (every task needs a gold answer)"),
    ("answer missing", line(answer=...), None, "T:1: answer: missing (every task needs a gold answer)"),
    ("answer a bool", line(answer=True), None, "T:1: answer: must be a string, got true"),
    ("answer infinite", line().replace('"4"', "1e400"), None, "T:1: answer: the number inf is not a finite number"),
    ("answer a list", line(answer=[4]), None, "T:1: answer: must be a string, got a list"),
    ("suite a number", line(suite=1), None, "T:1: suite: must be a string"),
    ("reference not a list", line(reference="x = 1"), None, "T:1: reference: must be a list of steps or null"),
    ("reference kind", line(reference=[{"kind": "act", "thought": "t"}]), None, "T:1: reference[0].kind: must be one of plan, action"),
    ("reference code", line(reference=[{"kind": "plan", "thought": "t"}, {"kind": "action", "thought": "t", "code": 5}]),
     None, "T:1: reference[1].code: must be a string, got the number 5"),
    ("reference thought", line(reference=[{"kind": "plan"}]), None, "T:1: reference[0].thought: missing"),
    ("reference unknown", line(reference=[{"kind": "plan", "thought": "t", "cell": "x"}]), None, "T:1: reference[0].cell: unknown field"),
    ("reference schema 2", line(reference=[{"kind": "plan", "thought": "t", "schema": 2}]), None, "T:1: reference[0].schema: version 2"),
    ("reference step not an object", line(reference=["x = 1"]), None, "T:1: reference[0]: expected a step object"),
    ("invalid UTF-8", line().encode() + b'\n{"id": "q2", "question": "caf\xe9", "answer": "4"}', None,
     "T:2: not UTF-8: byte 0xe9 at byte 30 of the line"),
    ("empty file", "", None, "T: no tasks (the file is empty or holds only blank lines)"),
    ("only blank lines", "\n  \n\n", None, "T: no tasks"),
    ("missing corpus", line(meta={"corpus": "nowhere.jsonl"}), None, "T:1: meta.corpus: no such corpus file (nowhere.jsonl)"),
    ("corpus not a string", line(meta={"corpus": 3}), None, "T:1: meta.corpus: must be a corpus path or embedded:<seed>"),
    ("embedded corpus seed", line(meta={"corpus": "embedded:one"}), None, "T:1: meta.corpus: 'embedded:one' is not embedded:<integer seed>"),
    ("corpus not JSONL", line(meta={"corpus": "C"}), DOCS + "Tarsholm, a city\n", "C:2: not JSON"),
    ("corpus without title", line(meta={"corpus": "C"}), '{"id": "a", "text": "x"}\n', "C:1: title: missing"),
    ("corpus without id", line(meta={"corpus": "C"}), '{"title": "a", "text": "x"}\n', "C:1: id: missing"),
    ("corpus text a list", line(meta={"corpus": "C"}), '{"id": "a", "title": "a", "text": ["x"]}\n', "C:1: text: must be a string, got a list"),
    ("corpus empty", line(meta={"corpus": "C"}), "", "C: no documents in this corpus"),
    ("corpus not UTF-8", line(meta={"corpus": "C"}), DOCS.encode() + b'{"id": "b", "title": "\xff", "text": ""}\n', "C:2: not UTF-8"),
    ("question too long", line(question="x" * 70_000), None, "T:1: question: 70,000 characters, over the limit of 65,536"),
    ("answer too long", line(answer="4" * 70_000), None, "T:1: answer: 70,000 characters, over the limit of 65,536"),
]


def write(tmp_path: Path, content: str | bytes, corpus: str | bytes | None) -> tuple[Path, str, str]:
    """The task file (and corpus, when given) in tmp_path; returns (task file, T, C) where T
    and C are the paths as they appear in messages. The corpus name "C" in a task line is
    replaced by the corpus path (corpus paths are relative to the working directory)."""
    path, corpus_path = tmp_path / "tasks.jsonl", tmp_path / "corpus.jsonl"
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(data.replace(b'"corpus": "C"', json.dumps({"corpus": str(corpus_path)})[1:-1].encode()))
    if corpus is not None:
        corpus_path.write_bytes(corpus.encode() if isinstance(corpus, str) else corpus)
    return path, str(path), str(corpus_path)


@pytest.mark.parametrize("content, corpus, expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_each_problem_names_file_line_and_field(tmp_path: Path, content: str | bytes, corpus: str | None,
                                                expected: str) -> None:
    path, t, c = write(tmp_path, content, corpus)
    expected = expected.replace("T", t, 1) if expected.startswith("T") else expected.replace("C", c, 1)
    with pytest.raises(TaskFileError) as caught:
        read_task_file(path)
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems
    assert isinstance(caught.value, SchemaError) and isinstance(caught.value, ValueError)  # callers that caught these still do
    assert all("\n" not in p for p in caught.value.problems)


def test_all_problems_come_back_at_once_with_a_cap_on_the_lines_shown(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join([line(id=7, meta="m")] + [line(id=f"q{i}", answer=None) for i in range(30)]))
    problems = check_task_file(path)
    assert problems[:2] == [f'{path}:1: id: must be a string, got the number 7 (write it as "7")',
                            f"{path}:1: meta: must be an object, got the string 'm'"]
    assert len(problems) == 32 and problems[-1] == f"{path}:31: answer: null (every task needs a gold answer)"
    shown = TaskFileError(problems).lines()
    assert len(shown) == 21 and shown[-1] == "... and 12 more problems"


def test_a_file_of_bad_lines_keeps_the_first_thousand_and_counts_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text("x\n" * 5000)
    with pytest.raises(TaskFileError) as caught:
        read_task_file(path)
    assert len(caught.value.problems) == 1000 and caught.value.total == 5000
    assert caught.value.lines()[-1] == "... and 4,980 more problems"


def test_good_files_load_as_documented(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(DOCS + '{"id": 2, "title": "Velmaria", "text": "A country.", "url": "x"}\n')
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n\n".join([  # a BOM at the start, CRLF, a blank line
        line(answer=42),
        line(id="q2", answer=2.5, suite="search", meta={"corpus": str(corpus)},
             reference=[{"kind": "plan", "thought": "look it up"},  # a step without schema
                        {"schema": 1, "kind": "action", "thought": "t", "code": "final_answer(2.5)", "raw": None}]),
        line(id="q3", schema=1, reference=None, meta={"corpus": "embedded:0"}),
    ]).encode() + b"\r\n")
    tasks = read_task_file(path)
    assert [(t.id, t.answer, t.suite) for t in tasks] == [("q1", "42", "external"), ("q2", "2.5", "search"), ("q3", "4", "external")]
    assert tasks[1].reference is not None and [s.kind for s in tasks[1].reference] == ["plan", "action"]
    assert tasks[0].meta == {} and tasks[2].reference is None


@pytest.mark.parametrize("suite", ["math", "search"])
def test_generated_suites_pass_their_own_check(tmp_path: Path, suite: str) -> None:
    tasks = generate_suite(suite, "test", 4, seed=0)
    write_jsonl(tmp_path / "tasks.jsonl", tasks)
    assert [t.to_json() for t in read_task_file(tmp_path / "tasks.jsonl")] == [t.to_json() for t in tasks]


def test_a_bad_spec_is_a_task_file_error() -> None:
    with pytest.raises(TaskFileError, match="unknown split 'tset'"):
        load_tasks("math:tset")


def test_a_big_file_is_refused_by_its_size_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    with path.open("wb") as f:  # sparse: 300 MiB on paper, nothing on disk
        f.truncate(300 * 2**20)
    t0 = time.perf_counter()
    assert check_task_file(path) == [f"{path}: 300 MiB, over the 256 MiB limit of a task file; split it"]
    assert time.perf_counter() - t0 < 0.5


def test_a_long_line_is_skipped_without_holding_it(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    big = line(question="x" * 16 * 2**20) + "\n"  # a 16 MiB question
    path.write_text(big + line(id=7) + "\n")
    tracemalloc.start()
    try:
        problems = check_task_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert problems == [f"{path}:1: line of {len(big):,} bytes, over the limit of {8 * 2**20:,} (not read)",
                        f'{path}:2: id: must be a string, got the number 7 (write it as "7")']
    assert peak < 12 * 2**20  # up to the 8 MiB limit and a chunk, never the 16 MiB line (or its JSON)


def test_limits_are_a_parameter(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(line(question="x" * 100) + "\n")
    assert check_task_file(path, Limits(question_chars=50)) == [f"{path}:1: question: 100 characters, over the limit of 50"]
    assert check_task_file(path, Limits(file_bytes=10)) == [f"{path}: {path.stat().st_size} bytes, over the 10 bytes limit of a task file; split it"]


def test_a_relative_corpus_next_to_the_task_file_gets_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "corpus.jsonl").write_text(DOCS)
    (tmp_path / "data" / "tasks.jsonl").write_text(line(meta={"corpus": "corpus.jsonl"}) + "\n")
    monkeypatch.chdir(tmp_path)
    assert check_task_file("data/tasks.jsonl") == [
        "data/tasks.jsonl:1: meta.corpus: no such corpus file (corpus.jsonl) (paths are relative to the "
        "working directory; did you mean data/corpus.jsonl?)"]


COMMANDS = {
    "eval": ["--model", "tiny"],
    "bc": ["--teacher", "reference"],
    "mentor": ["--student", "tiny", "--teacher", "reference"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_exit_2_with_one_line_per_problem_and_write_nothing(tmp_path: Path, command: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([line(id=7), "not json", line(meta="m"), line(id="q2", answer=None)]) + "\n")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "score_distill", command, *COMMANDS[command], "--tasks", str(bad),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f'{bad}:1: id: must be a string, got the number 7 (write it as "7")',
        f"{bad}:2: not JSON: Expecting value at column 1",
        f"{bad}:3: meta: must be an object, got the string 'm'",
        f"{bad}:4: answer: null (every task needs a gold answer)",
    ]
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not out.exists()  # no config.yaml, no teacher cache, nothing


@pytest.mark.parametrize("command", COMMANDS)
def test_a_configured_corpus_is_checked_with_the_tasks(tmp_path: Path, command: str) -> None:
    # The corpus every task searches when it names none (`--tools.search.corpus`) is checked
    # up front too, not when the first sandbox asks for it.
    good = tmp_path / "tasks.jsonl"
    good.write_text(line(id="q1") + "\n")
    (tmp_path / "docs.jsonl").write_text('{"id": "d1", "title": "A"}\n')
    out = tmp_path / "out"
    for corpus, expected in ((tmp_path / "missing.jsonl", "tools.search.corpus: "),
                             (tmp_path / "docs.jsonl", f"{tmp_path / 'docs.jsonl'}:1: text: missing")):
        done = subprocess.run([sys.executable, "-m", "score_distill", command, *COMMANDS[command], "--tasks", str(good),
                               "--tools.search.corpus", str(corpus), "--out", str(out)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(expected), done.stderr
        assert not out.exists()
