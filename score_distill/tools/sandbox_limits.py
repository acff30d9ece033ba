"""The accepted range of every sandbox limit, checked before anything starts.

A limit outside its range is a usage error (ValueError naming the field and the range), not
a sandbox that fails later: inf or 1e300 seconds overflow poll() and setrlimit, a memory
limit above the machine's memory bounds nothing, and a negative one means nothing.

    >>> limit_ranges()["timeout_s"]
    (<class 'float'>, 0, 86400.0, 'seconds')
"""

from __future__ import annotations

import math
import os

DAY_S = 86400.0


def machine_memory_mb() -> int:
    """The machine's physical memory in MiB (never below the default memory_mb, so that the
    default config stays valid on a small machine); a limit above it bounds nothing."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    except (ValueError, OSError):  # not reported here: the largest limit setrlimit takes
        total = (2 ** 63 - 1) >> 20
    return max(int(total), 1024)


def limit_ranges() -> dict[str, tuple[type, float, float, str]]:
    """Field -> (type, exclusive lower bound, inclusive upper bound, unit) of every limit.
    The upper bounds keep each value inside what the kernel and our clocks accept (poll()
    takes int milliseconds, setrlimit a 64-bit count) and inside the machine."""
    ram = machine_memory_mb()
    return {"timeout_s": (float, 0, DAY_S, "seconds"), "cpu_time_s": (float, 0, DAY_S, "seconds"),
            "cpu_total_s": (float, 0, DAY_S, "seconds"),
            "memory_mb": (int, 63, ram, "MiB, the machine's memory"),
            "disk_mb": (int, 0, ram, "MiB, the machine's memory: the work dir is a tmpfs"),
            "max_output_chars": (int, 19, 10 ** 7, "characters"), "max_processes": (int, 3, 65536, "")}


def check_limit(where: str, value: object, kind: type, low: float, high: float, unit: str) -> None:
    """ValueError naming `where` and the accepted range unless `value` is a finite number of
    type `kind` (an int is a float here) with low < value <= high.

    >>> check_limit("timeout_s", float("inf"), float, 0, 86400, "seconds")
    Traceback (most recent call last):
    ...
    ValueError: timeout_s must be more than 0 and at most 86400 (seconds), got inf
    """
    numeric = (int, float) if kind is float else (int,)
    span = f"more than {_number(low)} and at most {_number(high)}" + (f" ({unit})" if unit else "")
    if isinstance(value, bool) or not isinstance(value, numeric):
        raise ValueError(f"{where} must be {'a number' if kind is float else 'an integer'} {span}, got {value!r}")
    if not (math.isfinite(value) and low < value <= high):
        raise ValueError(f"{where} must be {span}, got {value!r}")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
