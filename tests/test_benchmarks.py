"""The paper's benchmarks: the formats the community ships them in (fixtures we write in each),
their scorers, and `eval --benchmark` end to end with the tiny model (and a fake judge)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from score_distill.cli import main
from score_distill.tasks.benchmarks import read_benchmark
from score_distill.tasks.scoring import BENCHMARKS, LLMJudgeScorer, suite_scorer
from score_distill.tasks.validate import TaskFileError
from tests.fake_teacher_server import FakeServer

FIXTURES = {
    "ours": [{"id": "a1", "question": "What is 2 + 3?", "answer": "5"}],
    "score-release": [{"id": 7, "question": "What is 2 + 3?", "true_answer": "5", "level": "easy"}],
    "arpo": [{"question": "Who wrote Hamlet?", "answer": "William Shakespeare"}],
    "gaia": [{"task_id": "g-1", "Question": "Which city hosts the Louvre?", "Final answer": "Paris", "Level": 1}],
}
# agent-distillation's test files: one JSON object (written with indent=4), the records under "examples".
AGENT_DISTILLATION = {
    "metadata": {"dataset_info": {"name": "bamboogle", "fold": "test", "total_examples": 2,
                                  "filtering_criteria": None}},
    "examples": [{"id": "0", "question": "Who wrote Hamlet?", "answer": "William Shakespeare", "level": "hard",
                  "type": "bamboogle", "dataset_name": "bamboogle", "split": "test"},
                 {"id": 17, "question": "What is 2 + 3?", "answer": 5.0, "dataset_name": "GSM-hard", "split": "test"}],
}


def write(path: Path, records: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_every_format_reads_into_tasks_of_the_benchmark(tmp_path: Path) -> None:
    ours = read_benchmark(write(tmp_path / "o.jsonl", FIXTURES["ours"]), "AIME24")
    assert [(t.id, t.answer, t.suite) for t in ours] == [("a1", "5", "aime24")]
    [release] = read_benchmark(write(tmp_path / "s.jsonl", FIXTURES["score-release"]), "math500")
    assert (release.id, release.question, release.answer, release.meta) == ("7", "What is 2 + 3?", "5",
                                                                             {"fields": {"level": "easy"}})
    [arpo] = read_benchmark(write(tmp_path / "a.jsonl", FIXTURES["arpo"]), "bamboogle")
    assert (arpo.id, arpo.answer) == ("bamboogle-1", "William Shakespeare")  # ids from the line number
    [gaia] = read_benchmark(write(tmp_path / "g.jsonl", FIXTURES["gaia"]), "gaia")
    assert (gaia.id, gaia.question, gaia.answer, gaia.meta["fields"]) == ("g-1", "Which city hosts the Louvre?",
                                                                          "Paris", {"Level": 1})


def write_document(path: Path, document: object, indent: int | None = 4) -> Path:
    path.write_text(json.dumps(document, indent=indent), encoding="utf-8")
    return path


def test_agent_distillation_files_are_read_as_one_json_document(tmp_path: Path) -> None:
    hamlet, sum_ = read_benchmark(write_document(tmp_path / "bamboogle_125.json", AGENT_DISTILLATION), "bamboogle")
    assert (hamlet.id, hamlet.question, hamlet.answer) == ("0", "Who wrote Hamlet?", "William Shakespeare")
    assert hamlet.meta["fields"] == {"level": "hard", "type": "bamboogle", "dataset_name": "bamboogle", "split": "test"}
    assert (sum_.id, sum_.answer) == ("17", "5.0")  # numeric ids and answers become text
    assert read_benchmark(tmp_path / "bamboogle_125.json", "math500")[1].score("5").correct  # 5.0 == 5 as maths
    # The same document on one line, and a bare list of its records, whatever the file is called.
    one_line = read_benchmark(write_document(tmp_path / "one.jsonl", AGENT_DISTILLATION, indent=None), "bamboogle")
    bare = read_benchmark(write_document(tmp_path / "bare.txt", AGENT_DISTILLATION["examples"]), "bamboogle")
    assert [t.id for t in one_line] == [t.id for t in bare] == ["0", "17"]
    # A JSONL file of our format with an answer still reads as JSON lines.
    assert [t.id for t in read_benchmark(write(tmp_path / "o.json", FIXTURES["ours"]), "aime24")] == ["a1"]


def test_a_malformed_agent_distillation_file_names_the_file_record_and_field(tmp_path: Path) -> None:
    examples = [{"id": 0, "question": "q", "answer": "1"},
                {"id": 1, "question": "q"},                      # no answer
                {"id": 2, "question": 3, "answer": "1"},         # a question that is not text
                {"id": 3, "question": "q", "answer": None},      # null answer (agent-distillation's train set has two)
                "a string",                                       # not a record
                {"id": 0, "question": "q", "answer": "2"}]       # the first record's id again
    path = write_document(tmp_path / "bad.json", {"metadata": {}, "examples": examples})
    with pytest.raises(TaskFileError) as err:
        read_benchmark(path, "math500")
    lines = err.value.problems
    assert lines[0] == f"{path}:examples[1]: answer: missing (every task needs a gold answer)"
    assert lines[1].startswith(f"{path}:examples[2]: question:")
    assert lines[2] == f"{path}:examples[3]: answer: null (every task needs a gold answer)"
    assert lines[3] == f"{path}:examples[4]: expected a JSON object (one record), got the string 'a string'"
    assert lines[4] == f"{path}:examples[5]: id: duplicate '0' (first at examples[0])"
    assert len(lines) == 5 and all("\n" not in line for line in lines)
    torn = tmp_path / "torn.json"
    torn.write_text(json.dumps({"examples": examples[:1]}, indent=4)[:-20], encoding="utf-8")
    with pytest.raises(TaskFileError) as err:
        read_benchmark(torn, "math500")
    assert err.value.problems == [f"{torn}: not JSON: Unterminated string starting at line 6 column 23"]
    with pytest.raises(TaskFileError, match=r"other.json: expected an object with an 'examples' list .* got an object "
                                            r"of metadata, data$"):
        read_benchmark(write_document(tmp_path / "other.json", {"metadata": {}, "data": []}), "math500")
    with pytest.raises(TaskFileError, match="no records"):
        read_benchmark(write_document(tmp_path / "empty.json", {"metadata": {}, "examples": []}), "math500")


def test_malformed_files_name_the_file_line_and_field_of_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", [
        {"id": "1", "question": "q", "true_answer": "5"},
        {"id": "2", "question": "q"},                      # its format's answer field missing
        {"id": "3", "question": 4, "true_answer": "5"},    # a question that is not text
        "not json",
        {"id": "1", "question": "q", "true_answer": "6"},  # a duplicate id
    ])
    with pytest.raises(TaskFileError) as err:
        read_benchmark(path, "aime25")
    lines = err.value.problems
    assert len(lines) == 4 and all(line.startswith(f"{path}:") for line in lines)
    assert lines[0].startswith(f"{path}:2: true_answer: missing")
    assert lines[1].startswith(f"{path}:3: question:") and f"{path}:4:" in lines[2]
    assert lines[3].startswith(f"{path}:5: id: duplicate '1'")
    with pytest.raises(TaskFileError, match="no answer field: expected answer"):
        read_benchmark(write(tmp_path / "odd.jsonl", [{"prompt": "q", "gold": "1"}]), "hotpotqa")
    with pytest.raises(TaskFileError, match="no such benchmark file"):
        read_benchmark(tmp_path / "missing.jsonl", "hotpotqa")
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        read_benchmark(path, "nope")


def test_each_benchmark_is_scored_as_the_paper_scores_it(tmp_path: Path) -> None:
    groups = {g: [b.name for b in BENCHMARKS.values() if b.group == g] for g in ("math", "factual", "judged")}
    assert [len(v) for v in groups.values()] == [4, 4, 4]
    assert {suite_scorer(n) for n in groups["math"]} == {"math"} and {suite_scorer(n) for n in groups["factual"]} == {"f1"}
    [task] = read_benchmark(write(tmp_path / "m.jsonl", [{"id": "1", "question": "q", "true_answer": "4.25"}]), "aime24")
    assert task.score("\\frac{17}{4}").correct  # exact mathematical equivalence
    [qa] = read_benchmark(write(tmp_path / "f.jsonl", FIXTURES["arpo"]), "hotpotqa")
    partial = qa.score("Shakespeare")
    assert not partial.correct and 0.5 < partial.value < 1.0  # token F1 is the value, exact match the verdict
    [judged] = read_benchmark(write(tmp_path / "g.jsonl", FIXTURES["gaia"]), "gaia")
    with pytest.raises(ValueError, match="scored by an LLM judge"):
        judged.score("the city of Paris")
    yes = LLMJudgeScorer(lambda m: json.dumps({"correct": True, "reason": "same city"}))
    assert judged.score("the city of Paris", yes).correct
    broken = judged.score("the city of Paris", LLMJudgeScorer(lambda m: "no verdict"))
    assert broken.judge_failed and not broken.correct  # counted as a failure, never silently a verdict


def answer_policy(answer: str):
    def reply(messages):
        if len(messages) == 2:
            return "<first_thought>answer directly</first_thought>"
        return f"<thought>done</thought>\n<code>\nfinal_answer({answer!r})\n</code>"
    return reply


@pytest.mark.parametrize("fmt,name,answer", [("ours", "math500", "5"), ("score-release", "aime24", "5"),
                                              ("arpo", "bamboogle", "William Shakespeare"),
                                              ("gaia", "gaia", "the city of Paris"),
                                              ("agent-distillation", "bamboogle", "William Shakespeare")])
def test_eval_benchmark_end_to_end_on_each_format(fmt, name, answer, tmp_path, monkeypatch, capsys) -> None:
    from score_distill.models.scripted import ScriptedModel

    if fmt == "agent-distillation":
        first = {**AGENT_DISTILLATION, "examples": AGENT_DISTILLATION["examples"][:1]}
        data = write_document(tmp_path / "data.json", first)
    else:
        data = write(tmp_path / "data.jsonl", FIXTURES[fmt])
    with FakeServer(lambda r: json.dumps({"correct": True, "reason": "the same city"})) as judge:
        def run(out: str) -> dict:
            argv = ["eval", "--benchmark", name, "--data", str(data), "--out", str(tmp_path / out),
                    "--rollout.max-turns", "2", "--rollout.max-new-tokens", "16", "--judge", f"openai:j@{judge.url}"]
            assert main(argv) == 0
            return json.loads((tmp_path / out / "metrics.json").read_text())

        # The tiny (random) model runs the whole path: read, roll out, score.
        tiny = run("tiny")
        assert tiny["n"] == 1 and tiny["accuracy"] == 0.0
        # A policy that answers shows the scoring: right answers count, the judge's too.
        monkeypatch.setattr("score_distill.models.load.load_model",
                            lambda spec, **kw: ScriptedModel(answer_policy(answer)))
        hits = judge.hits
        assert run("scripted")["accuracy"] == 1.0
        asked = judge.hits - hits
        assert run("scripted")["accuracy"] == 1.0 and judge.hits - hits == asked  # resumed: cached, no new call
    assert asked == (1 if name == "gaia" else 0)


def test_a_judge_that_never_gives_a_verdict_is_counted_not_scored(tmp_path, monkeypatch) -> None:
    from score_distill.models.scripted import ScriptedModel

    monkeypatch.setattr("score_distill.models.load.load_model", lambda spec, **kw: ScriptedModel(answer_policy("Paris, France")))
    data = write(tmp_path / "g.jsonl", FIXTURES["gaia"])
    with FakeServer(lambda r: "I think so") as judge:
        assert main(["eval", "--benchmark", "gaia", "--data", str(data), "--judge", f"openai:j@{judge.url}",
                     "--out", str(tmp_path / "out"), "--rollout.max-turns", "3"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["accuracy"] == 0.0 and metrics["errors"]["judge_failed"] == 1


@pytest.mark.parametrize("extra,message", [([], "needs --data FILE"), (["--data", "x.jsonl"], "give --judge"),
                                           (["--data", "x.jsonl", "--judge", "http://x"], "expected openai:")])
def test_a_benchmark_without_what_it_needs_is_one_line(extra, message, tmp_path, capsys) -> None:
    assert main(["eval", "--benchmark", "gaia", *extra, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not (tmp_path / "out").exists()


def test_report_prints_the_papers_table_with_both_averages(tmp_path, capsys) -> None:
    dirs = []
    for i, b in enumerate(BENCHMARKS.values()):
        d = tmp_path / b.name
        d.mkdir()
        (d / "config.yaml").write_text(f"model: student\nbenchmark: {b.name}\n")
        # accuracy 10%, F1 20%: the factual four must be read as F1
        (d / "metrics.json").write_text(json.dumps({"accuracy": 0.1, "mean_score": 0.2, "n": 10}))
        dirs.append(str(d))
    assert main(["report", "--evals", *dirs]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| model | aime24 |") and len(table) == 3
    row = table[2].split(" | ")
    assert row[1] == "10.0" and row[5] == "20.0"  # aime24 accuracy, hotpotqa F1
    assert row[-2] == "15.0" and row[-1].rstrip(" |") == "10.0"  # (4 x 10 + 4 x 20) / 8, the judged four
    assert main(["report", "--evals", str(tmp_path / "nope")]) == 2
    assert "not a finished eval directory" in capsys.readouterr().err
