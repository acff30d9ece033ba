"""Resolve a model spec to a `ChatModel`: the one place that knows the spec syntax.

    load_model("smollm2-135m")                              # a built-in model (builtin.py)
    load_model("runs/demo/sft/final", autocast_bf16=True)   # a local Hugging Face directory
    load_model("openai:gpt-4o-mini@https://api.openai.com/v1", concurrency=16)
    load_model("openai:Qwen/Qwen2.5-72B-Instruct@http://127.0.0.1:8000/v1")
    load_model("runs/demo/bc/sft/final", engine="vllm", dtype="bfloat16")   # on a GPU

A local model runs on one of two engines: "local" (ours, `LocalModel`) or "vllm" (vLLM's
offline engine, `VLLMModel`, a CUDA GPU only). Keyword arguments go to the backend:
`LocalConfig` or `VLLMConfig` fields for local models (`device` is checked and, for vLLM, must
be a GPU), `OpenAIModel` arguments for endpoints. `openai:<model>` without `@<base-url>` uses `$OPENAI_BASE_URL`,
else the OpenAI API. Importing this module is cheap; torch loads only for local models.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from score_distill.models.base import ChatModel
from score_distill.models.builtin import builtin_path, is_builtin

if TYPE_CHECKING:
    from score_distill.precision import Bf16

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


ENGINES = ("local", "vllm")
ENGINE_HELP = "engine of a local model's generation: local (ours, any device) or vllm (a CUDA GPU; the vllm extra)"


def load_model(spec: str, engine: str = "local", **kw: Any) -> ChatModel:
    """The model named by `spec` (see the module docstring for the accepted forms)."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if spec.startswith(OPENAI_PREFIX):
        from score_distill.models.openai_compat import OpenAIModel

        model, base_url = parse_openai_spec(spec)
        return OpenAIModel(base_url, model, **kw)
    if is_builtin(spec):
        return _local(builtin_path(spec), spec, engine, kw)
    if Path(spec).is_dir():
        return _local(Path(spec), Path(spec).name, engine, kw)
    raise ValueError(f"unknown model {spec!r}: expected a built-in name (smollm2-135m, tiny), "
                     f"a Hugging Face model directory, or {OPENAI_PREFIX}<model>@<base-url>")


def model_directory(spec: str) -> Path:
    """The local directory of a model to train: a built-in name or a Hugging Face model
    directory (an endpoint cannot be trained).

    >>> model_directory("openai:m@http://x")
    Traceback (most recent call last):
    ...
    score_distill.config.UsageError: model 'openai:m@http://x': expected a built-in name (smollm2-135m, tiny) or a Hugging Face model directory
    """
    from score_distill.config import UsageError

    if is_builtin(spec):
        return builtin_path(spec)
    if (Path(spec) / "config.json").is_file():
        return Path(spec)
    raise UsageError(f"model {spec!r}: expected a built-in name (smollm2-135m, tiny) or a Hugging Face model directory")


def engine_settings(model: str, device: str, bf16: Bf16 = False, engine: str = "local") -> dict[str, object]:
    """Keyword arguments of `load_model` for `model`: the engine and device it runs on and
    its weights' dtype when it runs here (an OpenAI-compatible endpoint chooses its own). A
    device asked for and absent is a `DeviceError`.

    >>> engine_settings("tiny", "cpu", bf16=True), engine_settings("openai:m@http://x", "cuda")
    ({'engine': 'local', 'dtype': 'bfloat16', 'device': 'cpu'}, {})
    """
    from score_distill.devices import resolve_device
    from score_distill.precision import weights_dtype

    if model.startswith(OPENAI_PREFIX):
        return {}
    device = resolve_device(device)
    return {"engine": engine, "dtype": weights_dtype(bf16, device), "device": device}


def _local(path: Path, name: str, engine: str, kw: dict[str, Any]) -> ChatModel:
    if engine == "vllm":
        from score_distill.config import UsageError
        from score_distill.devices import resolve_device
        from score_distill.models.vllm_engine import VLLMConfig, VLLMModel

        device = resolve_device(str(kw.pop("device", "auto")))
        if not device.startswith("cuda"):
            raise UsageError(f"the vllm engine runs on a CUDA GPU; the device here is {device} (use --engine local)")
        return VLLMModel(path, VLLMConfig(**kw), name=name)
    from score_distill.models.local import LocalConfig, LocalModel

    return LocalModel(path, LocalConfig(**kw), name=name)
