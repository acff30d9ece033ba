"""Seeds derived from names: every sampling decision of a run (which tasks BC takes, how the
SFT/RL split falls, each rollout's sampler) is seeded from what it is about, so a resumed or
reordered run makes the same choices."""

from __future__ import annotations

import hashlib

from score_distill.storage import safe_text


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across runs and machines.

    >>> derive_seed("eval", "math-0-test-1", 0, 2) == derive_seed("eval", "math-0-test-1", 0, 2)
    True
    """
    digest = hashlib.sha256(safe_text("\x1f".join(map(str, parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
