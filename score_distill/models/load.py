"""Resolve a model spec to a `ChatModel`: the one place that knows the spec syntax.

    load_model("smollm2-135m")                              # a built-in model (builtin.py)
    load_model("runs/demo/sft/final", autocast_bf16=True)   # a local Hugging Face directory
    load_model("openai:gpt-4o-mini@https://api.openai.com/v1", concurrency=16)
    load_model("openai:Qwen/Qwen2.5-72B-Instruct@http://127.0.0.1:8000/v1")

Keyword arguments go to the backend: `LocalConfig` fields for local models, `OpenAIModel`
arguments for endpoints. `openai:<model>` without `@<base-url>` uses `$OPENAI_BASE_URL`,
else the OpenAI API. Importing this module is cheap; torch loads only for local models.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from score_distill.models.base import ChatModel
from score_distill.models.builtin import builtin_path, is_builtin

OPENAI_PREFIX = "openai:"
DEFAULT_BASE_URL = "https://api.openai.com/v1"


def parse_openai_spec(spec: str) -> tuple[str, str]:
    """`(model, base_url)` of an `openai:<model>@<base-url>` spec.

    >>> parse_openai_spec("openai:Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1")
    ('Qwen/Qwen2.5-7B-Instruct', 'http://127.0.0.1:8000/v1')
    """
    if not spec.startswith(OPENAI_PREFIX):
        raise ValueError(f"not an {OPENAI_PREFIX} spec: {spec!r}")
    model, _, base_url = spec[len(OPENAI_PREFIX) :].partition("@")
    if not model:
        raise ValueError(f"{spec!r}: no model name; write {OPENAI_PREFIX}<model>@<base-url>")
    return model, base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


def load_model(spec: str, **kw: Any) -> ChatModel:
    """The model named by `spec` (see the module docstring for the accepted forms)."""
    if spec.startswith(OPENAI_PREFIX):
        from score_distill.models.openai_compat import OpenAIModel

        model, base_url = parse_openai_spec(spec)
        return OpenAIModel(base_url, model, **kw)
    if is_builtin(spec):
        return _local(builtin_path(spec), spec, kw)
    if Path(spec).is_dir():
        return _local(Path(spec), Path(spec).name, kw)
    raise ValueError(f"unknown model {spec!r}: expected a built-in name (smollm2-135m, tiny), "
                     f"a Hugging Face model directory, or {OPENAI_PREFIX}<model>@<base-url>")


def _local(path: Path, name: str, kw: dict[str, Any]) -> ChatModel:
    from score_distill.models.local import LocalConfig, LocalModel

    return LocalModel(path, LocalConfig(**kw), name=name)
