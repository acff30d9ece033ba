"""Fixtures shared by the test modules."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property tests explore new inputs on every local run, but in CI (where `CI` is set) they
# are derandomised: the same examples each run, no example database carried between runs,
# and no health check that depends on how fast the machine is. A test's own
# `@settings(max_examples=...)` fixes its count; the profile's count is for the others.
# A failure found locally is added to the test as an `@example`, so CI checks it for good.
settings.register_profile("ci", derandomize=True, database=None, max_examples=100, deadline=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# tests/verl/ runs verl's own classes: it is collected where verl is installed (its own
# environment, scripts/verl_venv.sh: verl pins an older transformers than ours), not here.
collect_ignore_glob = [] if importlib.util.find_spec("verl") else ["verl/*"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny model (random 2-layer Llama), built once per session in a
    temporary folder so the user's cache is never touched."""
    from score_distill.models.builtin import builtin_path

    return builtin_path("tiny", root=tmp_path_factory.mktemp("models"))
