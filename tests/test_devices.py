"""The one `device` setting: "auto" finds a GPU or the CPU, a device asked for and absent is
refused in one line before anything loads, and every command and the pipeline take it."""

from __future__ import annotations

import pytest

from score_distill import devices
from score_distill.cli import main
from score_distill.devices import DeviceError, resolve_device, training_device


@pytest.fixture
def gpus(monkeypatch):
    """Pretend torch sees `n` CUDA devices."""
    def set_count(n: int) -> None:
        monkeypatch.setattr(devices, "_cuda", lambda: (n > 0, n))
    return set_count


def test_auto_is_a_gpu_when_one_is_visible(gpus) -> None:
    gpus(0)
    assert resolve_device("auto") == "cpu" and resolve_device("CPU") == "cpu"
    gpus(2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    assert training_device("auto") == "cuda"


def test_a_device_that_is_not_here_is_refused_naming_it(gpus) -> None:
    gpus(0)
    with pytest.raises(DeviceError, match="'cuda' asked for, but torch sees no CUDA device here"):
        resolve_device("cuda")
    gpus(2)
    with pytest.raises(DeviceError, match="'cuda:2': torch sees 2 CUDA devices here"):
        resolve_device("cuda:2")
    for bad in ("gpu", "cuda:x", "mps"):
        with pytest.raises(DeviceError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    # Training takes the kind: a numbered GPU there is refused, not silently ignored.
    with pytest.raises(DeviceError, match="CUDA_VISIBLE_DEVICES"):
        training_device("cuda:1")


@pytest.mark.parametrize("argv", [
    ["eval", "--model", "tiny", "--tasks", "math:test", "--n", "1"],
    ["mentor", "--student", "tiny", "--tasks", "math:train", "--n", "1"],
    ["run", "--preset", "smoke"],
])
def test_every_command_refuses_an_absent_device_in_one_line_before_it_writes(argv, gpus, tmp_path, capsys) -> None:
    gpus(0)
    out = tmp_path / "out"
    assert main([*argv, "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device here" in err
    assert not out.exists()


def test_the_local_engine_runs_on_the_device_it_was_given(gpus) -> None:
    from score_distill.models.builtin import builtin_path
    from score_distill.models.local import LocalConfig, LocalModel

    gpus(0)
    assert LocalModel(builtin_path("tiny"), LocalConfig(device="auto")).device.type == "cpu"
    with pytest.raises(DeviceError):
        LocalModel(builtin_path("tiny"), LocalConfig(device="cuda"))
