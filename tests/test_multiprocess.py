"""Training on several processes: `score-distill sft` and `score-distill rl` under
`accelerate launch` with 2 CPU processes (gloo) make the same model as one process with the
same global batch, with uneven work across the processes, and a killed 2-process run
resumes to that same model. Each test starts the real command line, as a user would."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from score_distill.types import write_jsonl
from tests.test_rl import build_word_model, word_items

pytestmark = pytest.mark.slow

ACCELERATE = Path(sys.executable).with_name("accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(processes: int, args: list[str]) -> list[str]:
    """`score-distill ARGS` alone, or under `accelerate launch` with `processes` CPU processes
    (the README's command: `--multi_gpu` is accelerate's launcher of N processes, torchrun;
    without a GPU they train on the CPU with gloo)."""
    if processes == 1:
        return [sys.executable, "-m", "score_distill", *args]
    return [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            "-m", "score_distill", *args]


def run(processes: int, args: list[str], cwd: Path) -> str:
    """Run to the end; returns what it wrote on stderr."""
    done = subprocess.run(command(processes, args), cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it, as a machine that goes down does
    (torchrun starts its workers in sessions of their own: killing the launcher alone leaves
    them running, and they would finish the run)."""
    import psutil

    root = psutil.Process(pid)
    procs = [*root.children(recursive=True), root]
    for p in procs:
        p.kill()
    psutil.wait_procs(procs, timeout=30)


def killed_run(args: list[str], out: Path, written: Path, cwd: Path) -> None:
    """Start `args` (writing into `out`) on 2 processes and kill the whole run once `written`
    exists; nothing may have finished it behind our back."""
    proc = subprocess.Popen(command(2, [*args, "--out", str(out)]), cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not written.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.02)
    kill_tree(proc.pid)
    proc.wait()
    time.sleep(1.0)
    assert not (out / "final").exists()


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rl_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    """18 teacher trajectories: with a global batch of 4 in micro-batches of 2, the last step
    has one micro-batch of real rows, which two processes cannot share evenly."""
    out = tmp_path_factory.mktemp("bc")
    run(1, ["bc", "--teacher", "reference", "--tasks", "math:train", "--n", "36", "--fraction", "0.5",
            "--out", str(out)], out)
    trajectories = out / "bc_trajectories.jsonl"
    assert len(trajectories.read_text().splitlines()) == 18
    return trajectories


def test_sft_on_two_processes_makes_the_model_one_process_makes(tiny_dir, sft_data, tmp_path):
    args = ["sft", "--model", str(tiny_dir), "--data", str(sft_data), "--epochs", "1", "--batch-size", "4",
            "--micro-batch-size", "2", "--lr", "0.001", "--bf16", "false", "--device", "cpu"]
    run(1, [*args, "--out", str(tmp_path / "one")], tmp_path)
    run(2, [*args, "--out", str(tmp_path / "two")], tmp_path)
    one, two = weights(tmp_path / "one" / "final"), weights(tmp_path / "two" / "final")
    assert max_diff(one, weights(tiny_dir)) > 1e-3  # it trained
    assert max_diff(one, two) < 1e-5
    summaries = [json.loads((tmp_path / d / "train_summary.json").read_text()) for d in ("one", "two")]
    assert [s["processes"] for s in summaries] == [1, 2]
    assert [s["rows"] for s in summaries] == [18, 18]  # the rows that weigh nothing are not counted
    # 5 optimiser steps over 18 rows: the fillers completed the last batch, no row was repeated
    assert summaries[0]["steps_this_call"] == summaries[1]["steps_this_call"] == 5


def test_sft_on_two_processes_killed_and_resumed_makes_the_same_model(tiny_dir, sft_data, tmp_path):
    """Checkpoints at every step (the main process's clock decides for both), a kill after
    the second, and the same command again: the model the uninterrupted run makes."""
    args = ["sft", "--model", str(tiny_dir), "--data", str(sft_data), "--epochs", "2", "--batch-size", "4",
            "--micro-batch-size", "2", "--lr", "0.001", "--bf16", "false", "--device", "cpu",
            "--checkpoint-every-s", "0.001"]
    run(2, [*args, "--out", str(tmp_path / "whole")], tmp_path)
    killed = tmp_path / "killed"
    # killed anywhere after the second checkpoint is whole: maybe while writing a later one
    killed_run(args, killed, killed / "checkpoint-2" / "complete.json", tmp_path)
    run(2, [*args, "--out", str(killed)], tmp_path)
    summary = json.loads((killed / "train_summary.json").read_text())
    # it went on from a whole checkpoint, not from the start, and counted the steps from there
    assert summary["resumed_from_step"] >= 2
    assert summary["steps_this_call"] == 10 - summary["resumed_from_step"]
    assert max_diff(weights(tmp_path / "whole" / "final"), weights(killed / "final")) < 1e-5


RL_ARGS = ["--steps", "4", "--items-per-step", "4", "--group-size", "4", "--lr", "0.02",
           "--rollout.max-new-tokens", "3", "--rollout.max-turns", "3", "--micro-batch-size", "3", "--bf16", "false",
           "--device", "cpu", "--save-every", "1", "--samples-per-step", "1", "--use-key-step", "false"]


def test_rl_on_two_processes_killed_and_resumed_makes_the_model_one_process_makes(tmp_path):
    build_word_model(tmp_path / "model")
    _, items = word_items(4)
    write_jsonl(tmp_path / "rl_items.jsonl", items)
    args = ["rl", "--model", str(tmp_path / "model"), "--items", str(tmp_path / "rl_items.jsonl"), *RL_ARGS]
    run(1, [*args, "--out", str(tmp_path / "one"), "--cpu-threads", "1"], tmp_path)

    # Two processes, killed (the launcher and both workers) once step 2's checkpoint is written.
    two = tmp_path / "two"
    killed_run(args, two, two / "checkpoints" / "step-000002" / "state.json", tmp_path)
    resumed = run(2, [*args, "--out", str(two)], tmp_path)  # the same command resumes
    assert f"from {two / 'checkpoints'}/step-00000" in resumed

    one_log, two_log = records(tmp_path / "one"), records(two)
    assert [r["step"] for r in two_log] == [1, 2, 3, 4]
    # the same rollouts, rewards and losses (each process rolled out half of every step)
    assert [r["reward"] for r in one_log] == [r["reward"] for r in two_log]
    assert [r["trained_seqs"] for r in one_log] == [r["trained_seqs"] for r in two_log]
    assert all(abs(a["loss"] - b["loss"]) < 1e-4 for a, b in zip(one_log, two_log))
    # Some step had an odd number of groups with a learning signal: one process trained on
    # more sequences than the other and the other ran weightless micro-batches to match it.
    assert any(round(r["signal"] * 4) % 2 == 1 for r in one_log)
    start = weights(tmp_path / "model")
    one, two_final = weights(tmp_path / "one" / "final"), weights(two / "final")
    assert max_diff(one, start) > 1e-3  # it trained
    assert max_diff(one, two_final) < 1e-5
    samples = (two / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 4  # one per step, written once, by the main process
