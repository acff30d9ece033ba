"""configs/paper.yaml: the paper's recipe loads as a RunConfig, says what the paper says, and
`run --check` reads every file it names (one line when one is missing or malformed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from score_distill.cli import main
from score_distill.config import load_yaml
from score_distill.pipeline import RunConfig
from score_distill.tasks.load import generate_suite
from score_distill.types import write_jsonl

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper.yaml"


def test_the_preset_holds_the_papers_recipe():
    cfg = load_yaml(RunConfig, PAPER)
    assert cfg.bc_fraction == 0.2 and cfg.max_interventions == 3 and cfg.max_turns == 8
    assert (cfg.rl.group_size, cfg.rl.items_per_step, cfg.rl.lr, cfg.rl.kl_coef) == (16, 128, 7e-7, 0.0)
    assert cfg.teacher.startswith("openai:") and cfg.student == "models/Qwen2.5-7B-Instruct"
    assert set(cfg.benchmarks) == {"aime24", "aime25", "math500", "olymmath", "hotpotqa", "2wikimultihopqa",
                                   "musique", "bamboogle"}
    assert cfg.eval_splits == [] and set(cfg.train_tasks) == set(cfg.suites) == {"math", "search"}


@pytest.fixture
def paper_dir(tmp_path, tiny_dir):
    """The files the preset names, made small: the tiny model as the student, generated
    tasks as the train sets, two records per benchmark."""
    shutil.copytree(tiny_dir, tmp_path / "models" / "Qwen2.5-7B-Instruct")
    data = tmp_path / "data" / "paper"
    write_jsonl(data / "train-math.jsonl", generate_suite("math", "train", 4, seed=0))
    write_jsonl(data / "train-search.jsonl", generate_suite("search", "train", 4, seed=0))
    for name in load_yaml(RunConfig, PAPER).benchmarks:
        lines = [json.dumps({"question": f"q{i} of {name}", "answer": str(i)}) for i in range(2)]
        (data / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_check_reads_every_file_and_runs_nothing(paper_dir, monkeypatch, capsys):
    monkeypatch.chdir(paper_dir)
    assert main(["run", "--preset", str(PAPER), "--device", "cpu", "--engine", "local", "--check"]) == 0
    out = capsys.readouterr().out
    assert "train_tasks.math: data/paper/train-math.jsonl (4 tasks)" in out
    assert "benchmarks.bamboogle: data/paper/bamboogle.jsonl (2 tasks)" in out
    assert "stages: world, untrained, bc, mps, split, score_sft, score_rl, bc_full" in out
    assert not (paper_dir / "runs").exists()


@pytest.mark.parametrize("broken, message", [
    ("data/paper/musique.jsonl", "benchmarks.musique:"),
    ("data/paper/train-search.jsonl", "train_tasks.search:"),
    ("models/Qwen2.5-7B-Instruct/config.json", "not a built-in model nor a Hugging Face model directory"),
])
def test_a_missing_or_malformed_file_is_one_line(paper_dir, monkeypatch, capsys, broken, message):
    monkeypatch.chdir(paper_dir)
    path = paper_dir / broken
    if path.name == "config.json":
        path.unlink()
    else:
        path.write_text('{"question": "no answer"}\n')
    assert main(["run", "--preset", str(PAPER), "--device", "cpu", "--engine", "local", "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_judged_benchmark_is_refused_with_where_to_evaluate_it(paper_dir, monkeypatch, capsys):
    monkeypatch.chdir(paper_dir)
    (paper_dir / "gaia.jsonl").write_text('{"Question": "q", "Final answer": "a"}\n')
    assert main(["run", "--preset", str(PAPER), "--device", "cpu", "--engine", "local", "--check",
                 "--benchmarks", json.dumps({"gaia": "gaia.jsonl"})]) == 2
    assert "score-distill eval --benchmark gaia --judge" in capsys.readouterr().err
