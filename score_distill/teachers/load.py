"""Resolve a teacher spec to a `Teacher`: the one place that knows the spec syntax.

    load_teacher("reference")                                          # reference solutions, no LLM
    load_teacher("openai:Qwen/Qwen2.5-72B-Instruct@http://127.0.0.1:8000/v1",
                 cache_dir="runs/mps/teacher-cache", timeout_s=300)    # any OpenAI-compatible endpoint

`openai:<model>@<base-url>` follows the model spec syntax (`models/load.py`; the key comes
from `$OPENAI_API_KEY`). Extra keyword arguments go to `OpenAIModel` (timeout_s,
max_retries, concurrency, api_key_env, extra_body...). The cache key names the model, not
the URL, so moving a server to another port keeps its cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from score_distill.models.load import OPENAI_PREFIX, parse_openai_spec
from score_distill.models.openai_compat import OpenAIModel
from score_distill.teachers.base import Teacher
from score_distill.teachers.llm import LLMTeacher, LLMTeacherConfig, chat_fn_from_openai
from score_distill.teachers.reference import ReferenceTeacher
from score_distill.tools.config import ToolConfig

REFERENCE = "reference"


def load_teacher(spec: str, *, tools: ToolConfig | None = None, cache_dir: str | Path | None = None,
                 config: LLMTeacherConfig | None = None, **client_options: Any) -> Teacher:
    """The teacher named by `spec`: "reference" or "openai:<model>@<base-url>".

    `tools` (the shared tool configuration the LLM teacher solves with), `cache_dir` and
    `config` apply to the LLM teacher; the reference teacher computes everything from the
    reference solutions, so it ignores `tools` and `cache_dir` (a rerun costs nothing anyway).
    """
    if spec == REFERENCE:
        if client_options or config is not None:
            raise ValueError("the reference teacher takes no model options or LLMTeacherConfig")
        return ReferenceTeacher()
    if spec.startswith(OPENAI_PREFIX):
        model, base_url = parse_openai_spec(spec)
        # The teacher never needs token log-probabilities; some servers reject the field. An
        # empty reply is never a judge's, repair's or solver's answer: treat it as the server's fault.
        client = OpenAIModel(base_url, model, **{"logprobs": False, "allow_empty": False, **client_options})
        return LLMTeacher(chat_fn_from_openai(client), model=model, config=config, cache_dir=cache_dir, tools=tools)
    raise ValueError(f"unknown teacher {spec!r}: expected {REFERENCE!r} or {OPENAI_PREFIX}<model>@<base-url>")
