"""Whether to compute in bfloat16: `bf16` settings take true, false or "auto".

bf16 halves the memory of weights, activations and caches, and is much faster where the
hardware multiplies bf16 natively: NVIDIA GPUs from Ampere on, and x86 CPUs with AVX-512 BF16
(Cooper Lake, Sapphire Rapids and later Xeons; Zen 4 and later) or AMX. Elsewhere the CPU
converts every operand to fp32 first, and bf16 is the slow choice: on an Ice Lake Xeon
(AVX-512 without BF16), a (512 x 576) x (576 x 1536) product ran at 64 GFLOP/s in bf16
and 285 in fp32 on 2 threads (bench/precision.txt). "auto" takes bf16 only where it is
native; true forces it, false forbids it.

    >>> resolve_bf16(True, "cpu"), resolve_bf16(False, "cuda")
    (True, False)
    >>> cpu_has_native_bf16("fpu avx512f avx512_bf16 amx_tile"), cpu_has_native_bf16("fpu avx512f")
    (True, False)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal, Union

Bf16 = Union[bool, Literal["auto"]]  # noqa: UP007 (read by config.py's converter)

# Feature flags of native bf16 arithmetic, as /proc/cpuinfo spells them: x86 on its `flags`
# line, ARMv8.6 BF16 (Graviton 3, Apple M2 and later) on its `Features` line.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_has_native_bf16(flags: str) -> bool:
    """Whether a /proc/cpuinfo `flags` (or `Features`) line names a native bf16 instruction set."""
    names = set(flags.split())
    return any(f in names for f in _BF16_FLAGS)


@functools.cache
def _cpu_native_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux: no way to tell here, so the safe (fast-everywhere) choice
        return False
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return cpu_has_native_bf16(line.partition(":")[2])


def native_bf16(device: str) -> bool:
    """Whether `device` ("cpu", "cuda", "cuda:1", ...) computes bf16 natively."""
    kind = device.split(":")[0]
    if kind == "cpu":
        return _cpu_native_bf16()
    if kind == "cuda":
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    return False


def resolve_bf16(setting: Bf16, device: str) -> bool:
    """A `bf16` setting made definite for `device`."""
    if setting == "auto":
        return native_bf16(device)
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"bf16 must be true, false or auto, got {setting!r}")


def weights_dtype(setting: Bf16, device: str) -> str:
    """The dtype name (`LocalConfig.dtype`) of a model that only generates on `device`.

    >>> weights_dtype(True, "cpu"), weights_dtype(False, "cpu")
    ('bfloat16', 'float32')
    """
    return "bfloat16" if resolve_bf16(setting, device) else "float32"
