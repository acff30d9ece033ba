"""Give memory that a finished stage freed back to the system.

The pipeline runs every stage in one process. glibc's allocator keeps freed blocks for
reuse instead of returning them, and a stage whose allocations differ in size from the last
one's (evaluation's KV caches after SFT's activations) grows the process further instead of
reusing them: in the demo, an evaluation right after an SFT stage took the process from 3.4
to 4.1 GiB (bench/demo_memory.txt). `release_memory()` between stages collects garbage and
asks glibc to hand every free page back (`malloc_trim`). Elsewhere (macOS, musl) it only
collects garbage.

    >>> isinstance(release_memory(), bool)
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import functools


@functools.cache
def _malloc_trim():  # noqa: ANN202 (a ctypes function, or None)
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def release_memory() -> bool:
    """Collect garbage, then return free heap pages to the system; True if glibc did so."""
    gc.collect()
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
