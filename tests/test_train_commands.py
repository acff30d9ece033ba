"""`score-distill sft` and `score-distill rl` as commands: what they read, what they refuse
with one line, and the accelerate configs they are launched with. Their training on one and
on several processes is in tests/test_multiprocess.py."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from score_distill.cli import main
from score_distill.commands import rl as rl_command
from score_distill.tasks.load import generate_suite
from score_distill.types import KeyStepItem, Step, Task, Trajectory, read_jsonl, write_jsonl

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def items_for(tasks) -> list[KeyStepItem]:
    return [KeyStepItem(task_id=t.id, question=t.question, answer=t.answer, suite=t.suite,
                        prefix=[Step(kind="plan", thought="p")], chosen=Step(kind="action", thought="t", code="x = 1"),
                        rejected=Step(kind="action", thought="t", code="x = 2")) for t in tasks]


@pytest.fixture
def captured(monkeypatch):
    """train_rl replaced by a recorder of what the command gave it."""
    calls = []

    def fake_train_rl(model, items, tasks_by_id, teacher, tools, out, opts, device, engine):
        calls.append({"model": model, "items": items, "tasks": tasks_by_id, "opts": opts, "engine": engine})
        return Path(out) / "final"

    monkeypatch.setattr("score_distill.train.rl.train_rl", fake_train_rl)
    return calls


def test_rl_reads_the_tasks_mentor_exported_beside_the_items(tiny_dir, tmp_path, captured):
    tasks = generate_suite("math", "train", 3, seed=0)
    write_jsonl(tmp_path / "export" / "rl_items.jsonl", items_for(tasks))
    write_jsonl(tmp_path / "export" / "rl_tasks.jsonl", tasks)
    args = parse(rl_command, ["--model", str(tiny_dir), "--items", str(tmp_path / "export"), "--out",
                              str(tmp_path / "rl"), "--group-size", "16", "--items-per-step", "128", "--lr", "7e-7"])
    assert rl_command.run(args) == 0
    [call] = captured
    exported = read_jsonl(tmp_path / "export" / "rl_tasks.jsonl", Task)
    assert {k: t.meta for k, t in call["tasks"].items()} == {t.id: t.meta for t in exported}  # meta kept
    assert all(t.meta["nodes"] for t in call["tasks"].values())
    assert (call["opts"].group_size, call["opts"].items_per_step, call["opts"].lr) == (16, 128, 7e-7)
    assert (tmp_path / "rl" / "config.yaml").is_file()


def test_rl_without_exported_tasks_makes_them_from_the_items(tiny_dir, tmp_path, captured):
    tasks = generate_suite("math", "train", 2, seed=0)
    write_jsonl(tmp_path / "rl_items.jsonl", items_for(tasks))
    assert rl_command.run(parse(rl_command, ["--model", str(tiny_dir), "--items", str(tmp_path / "rl_items.jsonl"),
                                             "--out", str(tmp_path / "rl")])) == 0
    made = captured[0]["tasks"]
    assert [(t.id, t.answer, t.meta) for t in made.values()] == [(t.id, t.answer, {}) for t in tasks]


@pytest.mark.parametrize("argv, message", [
    (["sft", "--model", "tiny", "--data", "no/such.jsonl"], "no/such.jsonl: no such file or directory"),
    (["sft", "--model", "openai:m@http://127.0.0.1:9", "--data", "{data}"], "expected a built-in name"),
    (["sft", "--data", "{data}"], "--model and --data are required"),
    (["rl", "--model", "tiny", "--items", "{empty_dir}"], "expected one rl_items.jsonl in this directory, found 0"),
    (["sft", "--model", "tiny", "--data", "{bad}"], "bad.jsonl:1: not JSON"),
    (["rl", "--model", "tiny", "--items", "{bad}"], "bad.jsonl:1: not JSON"),
    (["sft", "--model", "tiny", "--data", "{no_question}"], "a record without 'question'"),
])
def test_bad_inputs_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    data = tmp_path / "sft_trajectories.jsonl"
    data.write_text("")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.jsonl").write_text('not json\n{"x": 1}\n')
    write_jsonl(tmp_path / "no_question.jsonl", [Trajectory(task_id="t", steps=[Step(kind="plan", thought="p")])])
    argv = [a.format(data=data, empty_dir=tmp_path / "empty", bad=tmp_path / "bad.jsonl",
                     no_question=tmp_path / "no_question.jsonl") for a in argv] + ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_an_empty_sft_set_is_refused(tmp_path, capsys):
    data = tmp_path / "sft_trajectories.jsonl"
    data.write_text("")
    assert main(["sft", "--model", "tiny", "--data", str(data), "--out", str(tmp_path / "out")]) == 2
    assert "the SFT set is empty" in capsys.readouterr().err


def test_a_rerun_with_other_settings_is_refused_before_training(tiny_dir, tmp_path, captured, capsys):
    tasks = generate_suite("math", "train", 2, seed=0)
    write_jsonl(tmp_path / "rl_items.jsonl", items_for(tasks))
    argv = ["rl", "--model", str(tiny_dir), "--items", str(tmp_path / "rl_items.jsonl"), "--out", str(tmp_path / "rl")]
    assert main(argv) == 0
    assert main([*argv, "--save-every", "3"]) == 0  # checkpoint frequency may change on a resume
    assert main([*argv, "--lr", "1e-3"]) == 2
    assert "other settings (lr" in capsys.readouterr().err
    assert len(captured) == 2


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("zero3", "DEEPSPEED")])
def test_the_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.num_processes == 8 and config.mixed_precision == "bf16"
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # the final model saved whole
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_save_16bit_model"]
