"""`bf16: auto` resolves by what the hardware computes natively."""

from __future__ import annotations

import pytest

from score_distill import precision


@pytest.mark.parametrize(("flags", "native"), [
    ("fpu sse2 avx2 avx512f avx512_vnni", False),  # Ice Lake: AVX-512 without BF16
    ("fpu avx512f avx512_bf16", True),  # Cooper Lake, Zen 4
    ("fpu avx512f amx_bf16 amx_tile", True),  # Sapphire Rapids
    ("fp asimd sve bf16 i8mm", True),  # ARMv8.6 (Graviton 3), its Features line
    ("fpu avx512_bf16x", False),  # a flag that only starts like it
    ("", False),
])
def test_cpu_flags_decide_native_bf16(flags, native):
    assert precision.cpu_has_native_bf16(flags) is native


def test_auto_follows_the_device_and_explicit_settings_win(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_native_bf16", lambda: False)
    assert precision.resolve_bf16("auto", "cpu") is False
    assert precision.resolve_bf16(True, "cpu") is True  # forced: the user asked for it
    monkeypatch.setattr(precision, "_cpu_native_bf16", lambda: True)
    assert precision.resolve_bf16("auto", "cpu") is True
    assert precision.resolve_bf16(False, "cpu") is False
    with pytest.raises(ValueError, match="true, false or auto"):
        precision.resolve_bf16("yes", "cpu")


def test_the_demo_preset_leaves_precision_to_the_hardware():
    from score_distill.commands.run import preset_path
    from score_distill.config import load_yaml
    from score_distill.pipeline import RunConfig

    cfg = load_yaml(RunConfig, preset_path("demo"))
    assert cfg.sft.bf16 == "auto" and cfg.rl.bf16 == "auto" and cfg.inference_bf16 == "auto"
