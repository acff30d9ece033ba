"""The one tool configuration: sandbox limits and search settings, shared by every stage.

Collection (BC, MPS), training (RL rollouts) and evaluation all build their tools from a
`ToolConfig`, so an observation means the same thing everywhere (same timeout, same output
cap, same number of search results).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from score_distill.tools.fetch import FetchConfig, make_fetch
from score_distill.tools.sandbox import Sandbox, SandboxConfig
from score_distill.tools.search import SearchConfig, make_search
from score_distill.types import Task


@dataclass
class ToolConfig:
    sandbox: SandboxConfig = field(default_factory=SandboxConfig, metadata={"help": "sandbox limits"})
    search: SearchConfig = field(default_factory=SearchConfig, metadata={"help": "search backend"})
    fetch: FetchConfig = field(default_factory=FetchConfig, metadata={"help": "the fetch_page tool (off by default)"})


def require_no_fetch(config: ToolConfig) -> None:
    """`fetch_page` is an evaluation tool (the browsing benchmarks): the data a trainer reads
    is rendered with the system prompt that does not list it, so the stages that make
    training data or train refuse it, in one line."""
    if config.fetch.enabled:
        from score_distill.config import UsageError

        raise UsageError("tools.fetch.enabled is for evaluation (score-distill eval): training data and RL rollouts "
                         "are rendered with the system prompt that does not offer fetch_page")


def search_for(config: ToolConfig, task: Task) -> Callable[[str], str] | None:
    """The web_search callable for a task: the task's own corpus (`meta["corpus"]`) wins
    over the configured one; None when neither names a corpus and no HTTP backend is set."""
    corpus = task.meta.get("corpus")
    search = config.search
    if corpus:
        search = replace(search, corpus=str(corpus))
    if search.backend == "bm25" and not search.corpus:
        return None
    return make_search(search)


def open_sandbox(config: ToolConfig, task: Task) -> Sandbox:
    """A fresh sandbox for one trajectory of `task`."""
    return Sandbox(config.sandbox, search=search_for(config, task),
                   fetch=make_fetch(config.fetch) if config.fetch.enabled else None)
