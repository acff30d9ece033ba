"""A `ChatModel` over vLLM's offline engine, in this process: the GPU path for rollouts.

The same contract as the local engine (`models/base.py`), so the one rollout loop, its seeds
and every metric mean the same with either:
- prompts: each request is rendered to token ids by OUR tokenizer's chat template (the
  local engine's `encode`) and handed to vLLM as token ids, so both engines see the same
  prompt tokens;
- per-request seeds (`models/sampling.seed_for`, as the local engine derives them), stop
  strings (the text returned ends with the one hit), token caps;
- the sampled token ids and their log-probabilities (vLLM reports them from the raw logits,
  before temperature and top-p, as the local engine does); for an end-of-message finish the
  end token is in `token_ids` but not in `text`;
- accounting: `prompt_tokens` are those vLLM computed, `cached_tokens` those its prefix cache
  served, `time_s` each row's share of the call.

vLLM's prefix cache (on by default) keeps the KV of a trajectory's earlier turns and of the
prefix an RL group shares, so `cache_key` and `release` need nothing here. vLLM schedules
its own batch; `open_stream` sends every waiting turn in one call (`BatchedStream`).

RL (colocated, as TRL's `vllm_mode="colocate"`): the trainer holds the policy as a torch
module on the same GPU and, after every optimiser step, `sync_weights(policy)` loads its
weights into vLLM's model and drops vLLM's prefix cache. That needs vLLM's engine in this
process (`in_process`), not in the engine-core process vLLM starts by default. Not yet run
on a GPU: built against vLLM's source (see `sync_weights`) and tested with a fake engine.

vLLM is optional: `pip install -e '.[vllm]'` (README, "On a GPU"); importing this module
does not import it, and a missing vLLM is one line naming the extra.

    model = VLLMModel("runs/demo/bc/sft/final", VLLMConfig(gpu_memory_utilization=0.4))
    [gen] = model.generate([GenRequest(messages, seed=0)], SamplingParams(stop=("</code>",)))
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from score_distill.config import UsageError, option
from score_distill.models.base import (BatchedStream, Generation, GenRequest, ModelError, SamplingParams,
                                       chat_tokenizer, prompt_ids)
from score_distill.models.sampling import seed_for


@dataclass
class VLLMConfig:
    """How vLLM's engine is built (its `LLM` arguments)."""

    dtype: str = option("bfloat16", "weights dtype: bfloat16, float16 or float32")
    gpu_memory_utilization: float = option(0.45, "share of the GPU's memory vLLM takes for weights and KV cache; "
                                                 "the rest stays free for training beside it")
    max_model_len: int = option(8192, "longest prompt plus turn, in tokens")
    enable_prefix_caching: bool = option(True, "reuse the KV of prompt prefixes seen before (earlier turns, "
                                               "an RL group's shared prefix)")
    enforce_eager: bool = option(False, "no CUDA graphs: slower decoding, a faster start")
    seed: int = option(0, "seeds rows whose request and params carry no seed")
    in_process: bool = option(False, "run vLLM's engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), "
                                     "so RL can load updated weights into its model (`sync_weights`)")


def build_llm(path: str | Path, config: VLLMConfig) -> tuple[Any, Any]:
    """vLLM's `LLM` for the model directory `path`, and its `SamplingParams` class."""
    try:
        import vllm
    except ImportError:
        raise UsageError("the vllm engine needs vLLM: pip install -e '.[vllm]' (README, \"On a GPU\")") from None
    if config.in_process:  # read by vLLM when it builds the engine; it stays set for this process
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    llm = vllm.LLM(model=str(path), dtype=config.dtype, gpu_memory_utilization=config.gpu_memory_utilization,
                   max_model_len=config.max_model_len, enable_prefix_caching=config.enable_prefix_caching,
                   enforce_eager=config.enforce_eager, seed=config.seed)
    return llm, vllm.SamplingParams


class VLLMModel:
    """A `ChatModel` over a vLLM `LLM` (built from `path`, or given: tests pass an object
    with the same `generate`, and a `SamplingParams`-like class)."""

    def __init__(self, path: str | Path, config: VLLMConfig | None = None, name: str | None = None, *,
                 llm: Any = None, sampling_params: Any = None, tokenizer: Any = None) -> None:
        self.config = config or VLLMConfig()
        self.name = name or Path(path).name
        self.tokenizer = chat_tokenizer(path, tokenizer)
        if llm is None:
            llm, sampling_params = build_llm(path, self.config)
        self.llm, self._sampling = llm, sampling_params
        self._calls = 0

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """A conversation's prompt token ids, the generation prompt added (as `LocalModel`)."""
        return prompt_ids(self.tokenizer, messages)

    def sampling(self, request: GenRequest, params: SamplingParams, row: int) -> Any:
        """vLLM's sampling parameters for one row of a call."""
        return self._sampling(n=1, temperature=params.temperature, top_p=params.top_p,
                              max_tokens=params.max_new_tokens, stop=list(params.stop) or None,
                              include_stop_str_in_output=True, logprobs=0,
                              seed=seed_for(request.seed, params.seed, row, self.config.seed + self._calls))

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[Generation]:
        if not requests:
            return []
        t0 = time.perf_counter()
        prompts = [{"prompt_token_ids": self.encode(r.messages)} for r in requests]
        outputs = self.llm.generate(prompts, [self.sampling(r, params, i) for i, r in enumerate(requests)],
                                    use_tqdm=False)
        self._calls += 1
        if len(outputs) != len(requests):
            raise ModelError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        share = (time.perf_counter() - t0) / len(requests)
        return [generation(o, share) for o in outputs]

    def open_stream(self, params: SamplingParams, max_rows: int) -> BatchedStream:
        return BatchedStream(self, params, max_rows)

    def release(self, cache_key: str) -> None:
        """Nothing to drop: vLLM's prefix cache evicts by itself."""

    def pause_sampling(self) -> None:
        """Nothing to give back: vLLM keeps its share of the GPU through the update (its sleep
        mode, which would free it meanwhile, is not used)."""

    def sync_weights(self, model: Any) -> None:
        """Load the trained module's weights into vLLM's model, then drop vLLM's prefix cache
        (its keys/values were computed by the old weights).

        As TRL's colocate mode does it (TRL 1.10.0.dev0, `trl/generation/vllm_generation.py`,
        `sync_weights`): every parameter under its Hugging Face name goes to the vLLM model's
        `load_weights`, which maps those names onto vLLM's own (fused) layers, as when it reads
        a checkpoint, and casts to vLLM's dtype. TRL reaches the model through
        `llm.llm_engine.model_executor.driver_worker.model_runner.model`; we use vLLM's public
        `LLM.apply_model(fn)` (`vllm/entrypoints/llm.py`, which runs `fn(worker.get_model())`
        through `collective_rpc`, `vllm/v1/worker/worker_base.py`), read in vLLM's source of
        its v1 engine as of late 2026. It runs in this process only when the engine was built
        `in_process`; otherwise vLLM would have to pickle the weights to its engine process."""
        weights = [(name, p.detach()) for name, p in model.named_parameters()]
        self.llm.apply_model(lambda vllm_model: vllm_model.load_weights(weights))
        self.llm.reset_prefix_cache()


def generation(output: Any, time_s: float) -> Generation:
    """Our `Generation` from one vLLM `RequestOutput` (its first and only completion)."""
    done = output.outputs[0]
    ids = list(done.token_ids)
    logprobs = [float(step[token].logprob) for step, token in zip(done.logprobs or [], ids)]
    if done.finish_reason == "length":
        finish = "length"
    elif done.finish_reason == "stop":
        # vLLM names the stop string hit, or the stop token id / None for an end of message.
        finish = "stop" if isinstance(done.stop_reason, str) else "eos"
    else:
        raise ModelError(f"vLLM ended a request with finish_reason {done.finish_reason!r}")
    cached = int(getattr(output, "num_cached_tokens", 0) or 0)
    return Generation(text=done.text, token_ids=ids, logprobs=logprobs, finish_reason=finish,
                      prompt_tokens=len(output.prompt_token_ids) - cached, cached_tokens=cached, time_s=time_s)
