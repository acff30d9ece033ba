"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny model (random 2-layer Llama), built once per session in a
    temporary folder so the user's cache is never touched."""
    from score_distill.models.builtin import builtin_path

    return builtin_path("tiny", root=tmp_path_factory.mktemp("models"))
