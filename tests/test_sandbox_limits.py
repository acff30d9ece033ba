"""Bad sandbox limits and bad stdin are usage errors: a ValueError naming the field and its
range before anything starts; on the command line one stderr line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from score_distill.config import UsageError, apply_overrides, load_yaml
from score_distill.tools.sandbox import SandboxConfig
from score_distill.tools.sandbox_limits import machine_memory_mb

HUGE = str(10 ** 15)
# (flag as given to `exec`, text the message must hold). Each one used to start a sandbox and
# end in an OverflowError (or a "namespaces are not usable" warning) instead.
BAD_FLAGS = [
    ("--timeout-s=inf", "timeout_s must be more than 0 and at most 86400"),
    ("--timeout-s=1e300", "timeout_s must be more than 0 and at most 86400"),
    ("--timeout-s=.inf", "timeout_s must be more than 0 and at most 86400"),
    ("--timeout-s=nan", "timeout_s: cannot read 'nan' as float"),
    ("--timeout-s=[1", "timeout_s: cannot read '[1' as float"),
    ("--cpu-total-s=inf", "cpu_total_s must be more than 0 and at most 86400"),
    ("--cpu-time-s=-inf", "cpu_time_s must be more than 0"),
    ("--cpu-time-s=1e30", "cpu_time_s must be more than 0 and at most 86400"),
    (f"--memory-mb={HUGE}", "memory_mb must be more than 63 and at most"),
    ("--memory-mb=1e15", "memory_mb: cannot read '1e15' as int"),
    (f"--disk-mb={HUGE}", "disk_mb must be more than 0 and at most"),
    ("--disk-mb=0", "disk_mb must be more than 0"),
    (f"--max-processes={10 ** 19}", "max_processes must be more than 3 and at most 65536"),
    (f"--max-output-chars={10 ** 20}", "max_output_chars must be more than 19 and at most 10000000"),
    ("--isolation=docker", "isolation must be one of"),
]


def exec_cli(stdin: bytes, *flags: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "score_distill", "exec", *flags], input=stdin,
                          capture_output=True, timeout=60)


def assert_usage_error(done: subprocess.CompletedProcess[bytes], command: str, message: str) -> None:
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, stderr
    assert "Traceback" not in stderr and done.stdout == b""
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"score-distill {command}: ") and message in stderr, stderr


@pytest.mark.parametrize("flag, message", BAD_FLAGS)
def test_exec_rejects_a_bad_limit_with_one_line(flag: str, message: str) -> None:
    # The cell would leave a mark if it ran: nothing may start for a bad value.
    assert_usage_error(exec_cli(b'["print(1)"]', flag), "exec", message)


@pytest.mark.parametrize("stdin, message", [
    (b'["print(\xff)"]', "stdin is not valid UTF-8: byte 0xff at offset 8"),
    (b'["x = \xc3"]', "stdin is not valid UTF-8: byte 0xc3 at offset 6"),
    (b'\xef\xbb\xbf["x = 1"]', "stdin is not JSON"),  # a BOM: UTF-8, but not JSON
    (b'["print(\\udcff)"]', "cell 0 holds a lone surrogate"),  # valid JSON, not text
    (b'[' * 100000, "stdin is not JSON"),
])
def test_exec_rejects_bad_stdin_with_one_line(stdin: bytes, message: str) -> None:
    assert_usage_error(exec_cli(stdin), "exec", message)


@pytest.mark.parametrize("command", ["eval", "mentor", "bc"])
def test_every_command_with_a_sandbox_reports_a_bad_limit_in_one_line(command: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "score_distill", command, "--out", str(out),
                           "--tools.sandbox.timeout-s=inf"], capture_output=True, timeout=120)
    assert_usage_error(done, command, "SandboxConfig.timeout_s must be more than 0 and at most 86400")
    assert not out.exists()  # refused before anything was written


def test_run_reports_a_bad_override_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "score_distill", "run", "--preset", "smoke", "--out", str(out),
                           "--tools.sandbox.cpu-total-s", "1e300"], capture_output=True, timeout=120)
    assert_usage_error(done, "run", "SandboxConfig.cpu_total_s must be more than 0 and at most 86400")
    assert not out.exists()


def test_an_unreadable_config_file_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"tools: [\n")
    done = subprocess.run([sys.executable, "-m", "score_distill", "eval", "--out", str(tmp_path / "o"),
                           "--config", str(bad)], capture_output=True, timeout=120)
    assert_usage_error(done, "eval", "cannot read it as a YAML config")


@pytest.mark.parametrize("field, value", [
    ("timeout_s", float("inf")), ("timeout_s", float("nan")), ("timeout_s", 1e300), ("timeout_s", -1.0),
    ("cpu_time_s", float("inf")), ("cpu_total_s", float("inf")), ("cpu_total_s", 0),
    ("memory_mb", 10 ** 15), ("memory_mb", 1.5), ("memory_mb", True), ("disk_mb", 10 ** 15),
    ("max_processes", 10 ** 19), ("max_output_chars", 10 ** 20), ("timeout_s", "5"),
])
def test_sandbox_config_names_the_field_and_its_range(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^SandboxConfig\.{field} must be .*more than .* and at most"):
        SandboxConfig(**{field: value})  # type: ignore[arg-type]


def test_limits_up_to_the_bounds_are_accepted() -> None:
    ram = machine_memory_mb()
    config = SandboxConfig(timeout_s=86400, cpu_time_s=86400.0, cpu_total_s=86400, memory_mb=ram, disk_mb=ram,
                           max_processes=65536, max_output_chars=10 ** 7)
    assert config.memory_mb == ram
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxConfig(memory_mb=ram + 1)


def test_config_errors_are_usage_errors(tmp_path: Path) -> None:
    from score_distill.commands.settings import EvalCommand as EvalConfig

    for override in ("tools.sandbox.timeout_s=inf", "rollout.temperature=nan", "tools.sandbox={a: [",
                     "tools.nope=1", "n"):
        with pytest.raises(UsageError):
            apply_overrides(EvalConfig(), [override])
    listed = tmp_path / "list.yaml"
    listed.write_text(json.dumps([1, 2]))
    with pytest.raises(UsageError, match="expected a mapping"):
        load_yaml(EvalConfig, listed)
    with pytest.raises(UsageError, match="No such file"):
        load_yaml(EvalConfig, tmp_path / "missing.yaml")
