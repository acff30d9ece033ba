"""`score-distill exec` end to end: JSON cells on stdin, one JSON object per cell on stdout."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def exec_cli(stdin: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "score_distill", "exec", *flags], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_runs_cells_in_one_session() -> None:
    cells = ["x = 6 * 7", "print(x)", "x / 0", "final_answer(x + 1)", "while True:\n    pass", "print(x - 2)"]
    done = exec_cli(json.dumps(cells), "--timeout-s", "1", "--memory-mb", "512")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out[:2] == [{"output": "", "error": None, "timed_out": False},
                       {"output": "42\n", "error": None, "timed_out": False}]
    assert out[2]["error"] == "ZeroDivisionError: division by zero"
    assert out[3] == {"output": "", "error": None, "timed_out": False, "final_answer": "43"}
    assert out[4]["timed_out"] is True and out[4]["error"] == "the step timed out after 1 s"
    assert out[5] == {"output": "40\n", "error": None, "timed_out": False}  # state rebuilt


def test_memory_flag_is_applied() -> None:
    done = exec_cli(json.dumps(["b = bytearray(300 * 2 ** 20)"]), "--memory-mb", "256")
    assert json.loads(done.stdout)[0]["error"] == "MemoryError (the interpreter may use at most 256 MB)"


@pytest.mark.parametrize("stdin, message", [
    ("print(1)", "stdin is not JSON"),
    ('{"cells": ["x = 1"]}', "must hold a JSON list of strings"),
    ('["x = 1", 2]', "cell 1 is not a string but int"),
])
def test_bad_stdin_is_exit_code_2(stdin: str, message: str) -> None:
    done = exec_cli(stdin)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("score-distill exec: ") and message in done.stderr


def test_bad_flag_value_is_exit_code_2() -> None:
    done = exec_cli("[]", "--timeout-s", "-1")
    assert done.returncode == 2 and "timeout_s must be more than 0" in done.stderr
