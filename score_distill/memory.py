"""Give memory that a finished stage freed back to the system.

The pipeline runs every stage in one process. glibc's allocator keeps freed blocks for
reuse instead of returning them, and a stage whose allocations differ in size from the last
one's (evaluation's KV caches after SFT's activations) grows the process further instead of
reusing them: in the demo, an evaluation right after an SFT stage took the process from 3.4
to 4.1 GiB (bench/demo_memory.txt). `release_memory()` between stages collects garbage and
asks glibc to hand every free page back (`malloc_trim`). Elsewhere (macOS, musl) it only
collects garbage.

The opposite problem slows the engine down: by default glibc serves every block above a
threshold (128 KiB, raised as such blocks are freed) with a fresh `mmap` and unmaps it on
`free`, so a tensor of a few MiB made and dropped at every step (a decoding step's
contiguous keys, its logits) faults in every page of it again each time. On this project's
2-core CPU machine a decoding step of SmolLM2-135M at 20 rows x 1,300 columns took 286 ms
that way and 121 ms with those blocks kept on the heap for reuse (`bench/decode_speed.txt`).
`reuse_freed_blocks()` sets glibc's thresholds so that blocks up to 64 MiB come from the heap
and up to 256 MiB of freed memory at its top stays there until `release_memory()` trims it
(the pipeline calls it between stages, RL between its phases).

    >>> isinstance(release_memory(), bool), isinstance(reuse_freed_blocks(), bool)
    (True, True)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import functools


# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_BLOCKS_UP_TO = 64 << 20  # larger blocks still get their own mapping, returned at free
KEEP_FREED_UP_TO = 256 << 20  # free memory at the heap's top kept for reuse before glibc trims it


@functools.cache
def _libc_function(name: str):  # noqa: ANN202 (a ctypes function, or None)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return getattr(libc, name)
    except (OSError, AttributeError):  # not glibc: nothing to tune or trim
        return None


@functools.cache
def reuse_freed_blocks() -> bool:
    """Keep freed blocks of up to 64 MiB on the heap for reuse (see the module docstring);
    True if glibc took the setting. Process-wide and idempotent."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED_UP_TO))


def release_memory() -> bool:
    """Collect garbage, then return free heap pages to the system; True if glibc did so."""
    gc.collect()
    trim = _libc_function("malloc_trim")
    return bool(trim(0)) if trim is not None else False
