"""The local transformers backend: batched turn generation with a KV cache kept per trajectory.

Loads any Hugging Face causal LM directory whose tokenizer has a chat template. Each call to
`generate` renders every conversation with the chat template (generation prompt added) and
runs our own decoding loop rather than `model.generate`, because the agent needs:

- per-row ends: a row stops at the first of `params.stop` in its decoded text (the text
  returned ends with it) or at an end-of-message token, and then leaves the batch so it
  costs no more compute;
- per-row seeds: each row samples with its own `torch.Generator`, seeded from the request;
- log-probabilities of the chosen tokens under the model's raw distribution
  (`log_softmax(logits)`, before temperature and top-p; see `sampling.py`);
- reuse across turns: with `cache_key` set, the token ids and KV of a trajectory are kept
  after its turn; the next turn's prompt is matched on token ids (longest common prefix)
  and only the new part (the observation and the next assistant header, plus whatever the
  template renders differently from the raw generated ids) is prefilled.

    model = LocalModel(builtin_path("tiny"))
    [gen] = model.generate([GenRequest(messages, cache_key="t1", seed=0)], SamplingParams())
    model.release("t1")          # the trajectory ended
    model.clear_cache()           # after a weight update: cached keys/values are stale

Accounting per `Generation`: `prompt_tokens` are the prompt tokens prefilled in this call,
`cached_tokens` those reused from the cache, and `time_s` is the row's share of the call's
wall time: every forward pass (and its sampling) is split equally among the rows in it, so
the shares of a call add up to its duration. For an end-of-message finish the end token is
kept in `token_ids`/`logprobs` (its probability is part of the policy) but not in `text`.
The token that completes a stop string may carry a few characters past it: `text` is cut
at the stop string, `token_ids` keep that whole token.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from score_distill.config import option
from score_distill.models.base import Generation, GenRequest, SamplingParams
from score_distill.models.kv_engine import BatchKV, BatchLayout, KVStore, RowKV
from score_distill.models.sampling import choose_tokens, seed_for
from score_distill.models.stops import stop_cut, tail_window


@dataclass
class LocalConfig:
    """How the local engine runs."""

    device: str = option("cpu", "torch device (cpu, cuda, cuda:1, ...)")
    dtype: str = option("float32", "weights dtype: float32, bfloat16 or float16")
    autocast_bf16: bool = option(False, "run forward passes under bfloat16 autocast")
    max_batch_size: int = option(64, "rows decoded together; larger calls run in chunks")
    prefill_chunk: int = option(512, "prompt columns per prefill forward pass (bounds memory)")
    cache_budget_mb: int = option(4096, "memory for per-trajectory KV caches; least recently used evicted")
    num_threads: int = option(0, "torch CPU threads; 0 = the cores this process may use (affinity and "
                                 "cgroup quota). On a machine shared with other busy processes, 1 is "
                                 "often much faster: idle-spinning threads wait on descheduled peers")
    seed: int = option(0, "seeds rows whose request and params carry no seed")


@dataclass
class _Row:
    """Decoding state of one request."""

    index: int
    key: str | None
    prompt: list[int]
    cached: int
    kv: RowKV | None
    budget: int
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str = ""
    time_s: float = 0.0

    @property
    def suffix(self) -> list[int]:
        return self.prompt[self.cached :]


class LocalModel:
    """A `ChatModel` over a local Hugging Face causal LM directory."""

    def __init__(self, path: str | Path, config: LocalConfig | None = None, name: str | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config or LocalConfig()
        self.name = name or Path(path).name
        torch.set_num_threads(self.config.num_threads or available_cores())
        self.device = torch.device(self.config.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if not self.tokenizer.chat_template:
            raise ValueError(f"{path}: the tokenizer has no chat template")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, self.config.dtype))
        self.model.to(self.device).eval()
        text_config = self.model.config.get_text_config(decoder=True)
        self.n_layers = text_config.num_hidden_layers
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        self.kv_shape = (text_config.num_key_value_heads, head_dim)
        self.context = text_config.max_position_embeddings
        self.eos_ids = self._eos_ids()
        self.store = KVStore(self.config.cache_budget_mb << 20)
        self._rng = random.Random(self.config.seed)

    def _eos_ids(self) -> frozenset[int]:
        """End-of-message ids: the tokenizer's eos plus the generation config's (often a list)."""
        ids = {self.tokenizer.eos_token_id}
        gen_eos = self.model.generation_config.eos_token_id
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        return frozenset(i for i in ids if i is not None)

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the conversation rendered by the chat template, ready for a reply."""
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[Generation]:
        out: list[Generation] = []
        step = self.config.max_batch_size
        for lo in range(0, len(requests), step):
            out += self._generate_batch(requests[lo : lo + step], params, offset=lo)
        return out

    def release(self, cache_key: str) -> None:
        self.store.release(cache_key)

    def clear_cache(self) -> None:
        """Forget every trajectory's KV: call it after changing the weights (the cached keys
        and values were computed by the old ones)."""
        for key in self.store.keys():
            self.store.release(key)

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.config.autocast_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _start_row(self, index: int, request: GenRequest, params: SamplingParams, offset: int) -> _Row:
        ids = self.encode(request.messages)
        cached, kv = self.store.take(request.cache_key, ids)
        seed = seed_for(request.seed, params.seed, offset + index, self._rng.randrange(2**62))
        generator = torch.Generator(device=self.device).manual_seed(seed)
        budget = min(params.max_new_tokens, self.context - len(ids))
        return _Row(index, request.cache_key, ids, cached, kv, budget, generator)

    @torch.inference_mode()
    def _generate_batch(self, requests: list[GenRequest], params: SamplingParams, offset: int) -> list[Generation]:
        rows = [self._start_row(i, r, params, offset) for i, r in enumerate(requests)]
        for row in rows:
            if row.budget <= 0:  # the conversation already fills the context: nothing to run
                row.finish, row.prompt, row.cached = "length", [], 0
        live = [row for row in rows if not row.finish]
        training = self.model.training  # the RL trainer shares this model; sample in eval mode
        self.model.eval()
        try:
            if live:
                self._decode(live, params)
        finally:
            self.model.train(training)
        return [self._result(row, params) for row in rows]

    def _decode(self, live: list[_Row], params: SamplingParams) -> None:
        """Prefill the live rows' new prompt tokens, then sample until every row finishes."""
        layout = BatchLayout.of([r.cached for r in live], [len(r.suffix) for r in live])
        capacity = layout.width_cached + layout.width_suffix + max(r.budget for r in live)
        dtype = self.model.get_input_embeddings().weight.dtype
        if self.config.autocast_bf16:
            dtype = torch.bfloat16  # keys/values come out of autocast linears in bf16
        batch = BatchKV.build([r.kv for r in live], layout, capacity, self.n_layers, self.kv_shape,
                              dtype, self.device)
        for row in live:
            row.kv = None  # the batch holds its own copy now
        logits = self._prefill(batch, live, layout)
        window = tail_window(params.stop)
        while live:
            started = time.perf_counter()
            tokens, logprobs = choose_tokens(logits, params.temperature, params.top_p, [r.generator for r in live])
            finished = [self._push(r, t, lp, params, window) for r, t, lp in
                        zip(live, tokens.tolist(), logprobs.tolist())]
            _charge(live, started)
            if any(finished):
                live = self._retire(batch, live, finished)
            if live:
                started = time.perf_counter()
                step = torch.tensor([[r.tokens[-1]] for r in live], device=self.device)
                batch.append_column()
                logits = self._forward(batch, step)
                _charge(live, started)

    def _prefill(self, batch: BatchKV, live: list[_Row], layout: BatchLayout) -> torch.Tensor:
        """Run the right-aligned new prompt tokens through the model in column chunks; return
        the logits of the last column (B, V)."""
        started = time.perf_counter()
        width = layout.width_suffix
        window = torch.full((len(live), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        for r, row in enumerate(live):
            if row.suffix:
                window[r, width - len(row.suffix) :] = torch.tensor(row.suffix)
        window = window.to(self.device)
        logits = torch.empty(0)
        for lo in range(0, width, self.config.prefill_chunk):
            logits = self._forward(batch, window[:, lo : lo + self.config.prefill_chunk])
        _charge(live, started)
        return logits

    def _forward(self, batch: BatchKV, input_ids: torch.Tensor) -> torch.Tensor:
        """One forward pass over `input_ids` (B, T) appended to the batch cache; (B, V) logits
        of the last column."""
        extra = input_ids.shape[1]
        with self._autocast():
            out = self.model(input_ids=input_ids, attention_mask=batch.mask(extra),
                             position_ids=batch.positions(extra), cache=batch.cache, use_cache=True,
                             logits_to_keep=1)
        return out.logits[:, -1].float()

    def _push(self, row: _Row, token: int, logprob: float, params: SamplingParams, window: int) -> bool:
        """Append a sampled token; return whether the row is finished."""
        row.tokens.append(token)
        row.logprobs.append(logprob)
        if token in self.eos_ids:
            row.finish = "eos"
        elif params.stop and stop_cut(self._decode_ids(row.tokens[-window:]), params.stop) is not None:
            row.finish = "stop"
        elif len(row.tokens) >= row.budget:
            row.finish = "length"
        return bool(row.finish)

    def _retire(self, batch: BatchKV, live: list[_Row], finished: list[bool]) -> list[_Row]:
        """Store the KV of finished rows under their keys and drop them from the batch. The
        last sampled token was never fed to the model, so the KV covers prompt + tokens[:-1]."""
        for pos, (row, done) in enumerate(zip(live, finished)):
            if done and row.key is not None:
                self.store.put(row.key, row.prompt + row.tokens[:-1], batch.row_kv(pos))
        if all(finished):
            return []
        order = batch.compact(finished)
        return [live[i] for i in order]

    def _decode_ids(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _result(self, row: _Row, params: SamplingParams) -> Generation:
        shown = row.tokens[:-1] if row.finish == "eos" else row.tokens
        text = self._decode_ids(shown)
        if row.finish == "stop":
            cut = stop_cut(text, params.stop)
            text = text if cut is None else text[:cut]
        return Generation(text=text, token_ids=list(row.tokens), logprobs=list(row.logprobs),
                          finish_reason=row.finish, prompt_tokens=len(row.suffix),
                          cached_tokens=row.cached, time_s=row.time_s)


def _charge(rows: list[_Row], started: float) -> None:
    """Split the wall time since `started` equally among `rows`."""
    share = (time.perf_counter() - started) / len(rows)
    for row in rows:
        row.time_s += share


def available_cores() -> int:
    """CPU cores this process may use: its affinity set, capped by a cgroup v2 CPU quota
    (containers often see every host core but may use only a few)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota = quota_cores(Path("/sys/fs/cgroup/cpu.max").read_text())
    except OSError:
        quota = None
    return max(1, min(cores, quota)) if quota else cores


def quota_cores(cpu_max: str) -> int | None:
    """Whole cores allowed by a cgroup v2 `cpu.max` line ("max" means no quota).

    >>> quota_cores("200000 100000"), quota_cores("150000 100000"), quota_cores("max 100000")
    (2, 1, None)
    """
    quota, _, period = cpu_max.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return max(1, int(quota) // int(period))
