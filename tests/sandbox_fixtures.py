"""Fixtures shared by the sandbox test modules (import them by name into a test module)."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from score_distill.tools.sandbox import Sandbox, SandboxConfig

MakeSandbox = Callable[..., Sandbox]


@pytest.fixture
def make() -> Iterator[MakeSandbox]:
    """Sandboxes built from SandboxConfig keywords, all closed at the end of the test."""
    made: list[Sandbox] = []

    def build(search: Callable[[str], str] | None = None, **config: object) -> Sandbox:
        sandbox = Sandbox(SandboxConfig(**config), search=search)  # type: ignore[arg-type]
        made.append(sandbox)
        return sandbox

    yield build
    for sandbox in made:
        sandbox.close()


@pytest.fixture(params=["auto", "process"])
def isolation(request: pytest.FixtureRequest) -> str:
    """Every isolation this machine offers: "auto" (namespaces where unshare works) and "process"."""
    return str(request.param)


def protected(sandbox: Sandbox) -> bool:
    """Whether model code runs apart from us (own pid namespace or own uid), as documented."""
    return sandbox.isolation == "namespaces" or sandbox.uid is not None
