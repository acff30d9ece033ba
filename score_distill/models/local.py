"""The local transformers backend: batched turn generation with a KV cache kept per trajectory.

Loads any Hugging Face causal LM directory whose tokenizer has a chat template. Each request
is rendered with the chat template (generation prompt added) and decoded by our own loop
rather than `model.generate`, because the agent needs:

- per-row ends: a row stops at the first of `params.stop` in its decoded text (the text
  returned ends with it) or at an end-of-message token, and then leaves the batch so it
  costs no more compute;
- per-row seeds: each row samples with its own `torch.Generator`, seeded from the request;
- log-probabilities of the chosen tokens under the model's raw distribution
  (`log_softmax(logits)`, before temperature and top-p; see `sampling.py`);
- reuse across turns: with `cache_key` set, the token ids and KV of a trajectory are kept
  after its turn; the next turn's prompt is matched on token ids (longest common prefix)
  and only the new part (the observation and the next assistant header, plus whatever the
  template renders differently from the raw generated ids) is prefilled;
- shared prefixes: requests admitted together prefill what they share once (the prompt
  common to all, then each set of identical prompts, as in an RL group);
- a decoding layout: on CPU the linear weights are held column-major while sampling, which
  makes the few-row matmuls of a decoding step 2-3x faster (`decoding_layout`);
- continuous batching (`open_stream`, `decode_stream.DecodeStream`): a request joins the running batch at
  the next step, so an agent's next turn need not wait for the other rows' turns to end.
  `generate` is a stream fed every request at once. The running batch's keys/values are
  bounded (`batch_kv_mb`): a request waits, first in line, until the batch with it fits.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable

import torch

from score_distill.config import option
from score_distill.devices import resolve_device
from score_distill.models.base import Generation, GenRequest, SamplingParams, chat_tokenizer, prompt_ids
from score_distill.models.decode_stream import MIN_SHARED, DecodeStream, Row, charge_time
from score_distill.models.kv_engine import BatchKV, BatchLayout, KVStore, RowKV, common_prefix
from score_distill.models.lean_decode import LeanDecoder, lean_unsupported
from score_distill.models.sampling import seed_for
from score_distill.models.stops import stop_cut


@dataclass
class LocalConfig:
    """How the local engine runs."""

    device: str = option("auto", "torch device: auto (a CUDA GPU when one is visible), cpu, cuda, cuda:1, ...")
    dtype: str = option("float32", "weights dtype: float32, bfloat16 or float16")
    autocast_bf16: bool = option(False, "run forward passes under bfloat16 autocast")
    max_batch_size: int = option(64, "rows decoded together; larger calls run in chunks")
    prefill_chunk: int = option(512, "prompt columns per prefill forward pass (bounds memory)")
    cache_budget_mb: int = option(1024, "memory for per-trajectory KV caches kept between turns; least recently "
                                        "used evicted (an evicted trajectory is prefilled again)")
    batch_kv_mb: int = option(1536, "memory for the running batch's keys/values: a request joins only while the "
                                    "batch (every row as wide as its widest, plus the token cap) fits; one row "
                                    "always runs. 0 = no bound")
    num_threads: int = option(0, "torch CPU threads; 0 = the cores this process may use (affinity and "
                                 "cgroup quota). On a machine shared with other busy processes, 1 is "
                                 "often much faster: idle-spinning threads wait on descheduled peers")
    seed: int = option(0, "seeds rows whose request and params carry no seed")
    column_major: bool = option(True, "on CPU, hold the linear layers' weights column-major while decoding: "
                                      "the same values, faster matmuls for a few rows")
    lean_decode: bool = option(True, "on CPU, decode Llama-family models (llama, qwen2, mistral) through our lean "
                                     "step (models/lean_decode.py): fused q/k/v and gate/up weight copies "
                                     "while sampling (about half the weights' memory; all of it when the "
                                     "matmuls run in another dtype than the weights, or in fp32 with "
                                     "column_major), grouped attention "
                                     "without repeated keys; other models decode through transformers")


class LocalModel:
    """A `ChatModel` over a local Hugging Face causal LM directory.

    The running batch (`DecodeStream`) drives decoding through a few public methods, in
    this order for each row: `start_row` (a request becomes a `Row`, with what the KV store
    holds for it), `share_prefixes` (rows admitted together), `prefill` (the rows' new
    prompt tokens), then `append_token` after each sampled token and `forward` for the rows
    that go on, and `row_result` once a row is finished. `kv_dtype` is the dtype of the
    keys/values it allocates. The other underscored methods are this class's own."""

    def __init__(self, path: str | Path, config: LocalConfig | None = None, name: str | None = None) -> None:
        from transformers import AutoModelForCausalLM

        self.config = config or LocalConfig()
        self.name = name or Path(path).name
        torch.set_num_threads(self.config.num_threads or process_cores())
        self.device = torch.device(resolve_device(self.config.device))
        self.tokenizer = chat_tokenizer(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, self.config.dtype))
        self.model.to(self.device).eval()
        text_config = self.model.config.get_text_config(decoder=True)
        self.n_layers = text_config.num_hidden_layers
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        self.kv_shape = (text_config.num_key_value_heads, head_dim)
        self.kv_bytes_per_token = 2 * self.n_layers * text_config.num_key_value_heads * head_dim * (
            torch.finfo(self.kv_dtype()).bits // 8)
        self.context = text_config.max_position_embeddings
        self.eos_ids = self._eos_ids()
        self.store = KVStore(self.config.cache_budget_mb << 20)
        self._rng = random.Random(self.config.seed)
        self._column_major = False
        self._lean: LeanDecoder | None = None
        self._lean_signature: tuple[tuple[int, int], ...] = ()

    def decoding_layout(self) -> None:
        """Get the weights ready for decoding steps (called before every step; cheap when ready).

        With `config.lean_decode`, on CPU and a supported model, that is a `LeanDecoder` over
        fused copies of the weights in the dtype the matmuls run in (column-major with
        `config.column_major` in fp32; bf16 copies stay row-major, faster here); it is
        rebuilt when any parameter changed since (its tensor or its in-place version
        counter), so a sample never comes from stale copies. Otherwise,
        with `config.column_major` on CPU, every linear layer's weight is held column-major:
        a decoding step multiplies a few rows by each weight matrix, and some CPU BLAS
        builds run that product faster with the matrix stored column-major; the values,
        shapes and parameter objects stay the same, tied weights stay tied. `training_layout`
        undoes both: the optimizer's state and `save_pretrained` expect the ordinary layout,
        so the RL trainer calls it before each update."""
        column_major = self.config.column_major and self.device.type == "cpu"
        # CPU only: measured here, not on a GPU (where vLLM is the engine for generation)
        if self.config.lean_decode and self.device.type == "cpu" and lean_unsupported(self.model) is None:
            signature = tuple((p.data_ptr(), p._version) for p in self.model.parameters())
            if self._lean is None or signature != self._lean_signature:
                self._lean = None  # free the old copies before making new ones
                # bf16 matmuls of a few rows ran faster here on row-major weights (the lm head
                # 6.0 vs 7.4 ms at 16 rows, a whole step at 40 rows 129-146 vs 198-230 ms)
                lean_column_major = column_major and self.kv_dtype() == torch.float32
                self._lean = LeanDecoder(self.model, self.kv_dtype(), column_major=lean_column_major)
                self._lean_signature = signature
            return
        if self._column_major or not column_major:
            return
        set_weight_layout(self.model, column_major=True)
        self._column_major = True

    def training_layout(self) -> None:
        """Give the weights back their ordinary layout and drop the lean copies (see
        `decoding_layout`)."""
        self._lean, self._lean_signature = None, ()
        if not self._column_major:
            return
        set_weight_layout(self.model, column_major=False)
        self._column_major = False

    def _eos_ids(self) -> frozenset[int]:
        """End-of-message ids: the tokenizer's eos plus the generation config's (often a list)."""
        ids = {self.tokenizer.eos_token_id}
        gen_eos = self.model.generation_config.eos_token_id
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        return frozenset(i for i in ids if i is not None)

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the conversation rendered by the chat template, ready for a reply."""
        return prompt_ids(self.tokenizer, messages)

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[Generation]:
        stream = self.open_stream(params, self.config.max_batch_size)
        for i, request in enumerate(requests):
            stream.add(i, request)
        out: list[Generation | None] = [None] * len(requests)
        while stream.busy:
            for i, gen in stream.step():
                out[i] = gen  # type: ignore[index]
        return out  # type: ignore[return-value]

    def open_stream(self, params: SamplingParams, max_rows: int) -> DecodeStream:
        return DecodeStream(self, params, max_rows)

    def release(self, cache_key: str) -> None:
        self.store.release(cache_key)

    def clear_cache(self) -> None:
        """Forget every trajectory's KV: call it after changing the weights (the cached keys
        and values were computed by the old ones)."""
        for key in self.store.keys():
            self.store.release(key)

    def pause_sampling(self) -> None:
        """RL's rollouts are done: the weights go back to the layout the optimiser expects."""
        self.training_layout()

    def sync_weights(self, model: torch.nn.Module) -> None:
        """After an RL update of `model`, which must be this engine's own module: it samples
        from the live weights already (the lean copies are rebuilt when a parameter changes),
        so only the cached keys/values, computed by the old weights, are dropped."""
        if model is not self.model:
            raise ValueError("the local engine samples with the module being trained: sync_weights got another one")
        self.clear_cache()

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.config.autocast_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def budget(self, ids: list[int], params: SamplingParams) -> int:
        """New tokens a prompt of `ids` may get: the cap, or what the context leaves."""
        return min(params.max_new_tokens, self.context - len(ids))

    def start_row(self, tag: Hashable, request: GenRequest, params: SamplingParams, index: int,
                  ids: list[int]) -> Row:
        """The decoding state of `request`, whose prompt encodes to `ids`: the cached KV of
        the prefix its trajectory shares with `ids` (taken out of the store), its token
        budget, and its generator (seeded as `seed_for` says; `index` is its admission order)."""
        cached, kv = self.store.take(request.cache_key, ids)
        seed = seed_for(request.seed, params.seed, index, self._rng.randrange(2**62))
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return Row(tag, request.cache_key, ids, cached, kv, self.budget(ids, params), generator)

    def kv_dtype(self) -> torch.dtype:
        """The dtype of the keys/values the forward passes produce (so of every KV buffer)."""
        if self.config.autocast_bf16:
            return torch.bfloat16  # keys/values come out of autocast linears in bf16
        return self.model.get_input_embeddings().weight.dtype

    def prefill(self, batch: BatchKV, live: list[Row], layout: BatchLayout) -> torch.Tensor:
        """Run the right-aligned new prompt tokens through the model in column chunks; return
        the logits of the last column (B, V)."""
        started = time.perf_counter()
        logits = self._prefill_ids(batch, [row.suffix for row in live], layout.width_suffix)
        charge_time(live, started)
        return logits

    def _prefill_ids(self, batch: BatchKV, suffixes: list[list[int]], width: int) -> torch.Tensor:
        window = torch.full((len(suffixes), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        for r, ids in enumerate(suffixes):
            if ids:
                window[r, width - len(ids) :] = torch.tensor(ids)
        window = window.to(self.device)
        logits = torch.empty(0)
        for lo in range(0, width, self.config.prefill_chunk):
            logits = self.forward(batch, window[:, lo : lo + self.config.prefill_chunk])
        return logits

    def share_prefixes(self, rows: list[Row]) -> None:
        """Prefill once what rows admitted together share, before their own prefill.

        Rows that start with nothing cached often begin alike: every episode's system prompt
        and question template, and in RL a group's samples of one prompt, which are
        identical. First the prefix common to all of them is prefilled as one row; then, for
        each set of identical prompts, the rest of the prompt but its last token, one row per
        set. Each row then holds that KV as its own (`Row.shared`) and prefills only what is
        left. The tokens are the same; only the split of the prompt into forward passes
        changes, which moves the logits by float rounding (as reusing a turn's cache does).
        The time is charged to the rows that share it; `prompt_tokens` still counts every
        prompt token not taken from the cache."""
        fresh = [r for r in rows if r.kv is None and len(r.prompt) > 1]
        if len(fresh) < 2:
            return
        started = time.perf_counter()
        common = min(len(r.prompt) for r in fresh) - 1
        first = fresh[0].prompt
        for r in fresh[1:]:
            common = min(common, common_prefix(first, r.prompt))
        if common < MIN_SHARED:
            common = 0
        kv = self._prefix_kv([None], [0], [first[:common]])[0] if common else None
        for r in fresh:
            r.shared, r.kv = common, kv
        groups: dict[tuple[int, ...], list[Row]] = {}
        for r in fresh:
            groups.setdefault(tuple(r.prompt), []).append(r)
        sets = [g for g in groups.values() if len(g) > 1 and len(g[0].prompt) - 1 - common >= MIN_SHARED]
        if sets:
            kvs = self._prefix_kv([kv] * len(sets), [common] * len(sets),
                                  [g[0].prompt[: len(g[0].prompt) - 1] for g in sets])
            for g, group_kv in zip(sets, kvs):
                for r in g:
                    r.shared, r.kv = len(r.prompt) - 1, group_kv
        charge_time(fresh, started)

    def _prefix_kv(self, kvs: list[RowKV | None], known: list[int], ids: list[list[int]]) -> list[RowKV]:
        """The KV of each `ids`, whose first `known` tokens' KV is in `kvs`."""
        layout = BatchLayout.of(known, [len(i) - k for i, k in zip(ids, known)])
        batch = BatchKV.build(kvs, layout, layout.width_cached + layout.width_suffix, self.n_layers,
                              self.kv_shape, self.kv_dtype(), self.device)
        self._prefill_ids(batch, [i[k:] for i, k in zip(ids, known)], layout.width_suffix)
        return [batch.row_kv(r) for r in range(len(ids))]

    def forward(self, batch: BatchKV, input_ids: torch.Tensor) -> torch.Tensor:
        """One forward pass over `input_ids` (B, T) appended to the batch cache; (B, V) logits
        of the last column."""
        extra = input_ids.shape[1]
        if extra == 1 and self._lean is not None:
            return self._lean.step(input_ids, batch.positions(1), batch.mask(1), batch.layers)
        with self._autocast():
            out = self.model(input_ids=input_ids, attention_mask=batch.mask(extra),
                             position_ids=batch.positions(extra), cache=batch.cache, use_cache=True,
                             logits_to_keep=1)
        return out.logits[:, -1].float()

    def append_token(self, row: Row, token: int, logprob: float, params: SamplingParams, window: int) -> bool:
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

    def _decode_ids(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def row_result(self, row: Row, params: SamplingParams) -> Generation:
        """The `Generation` of a finished row: its text (cut at the stop string, without the
        end-of-message token), token ids, log-probs and accounting."""
        shown = row.tokens[:-1] if row.finish == "eos" else row.tokens
        text = self._decode_ids(shown)
        if row.finish == "stop":
            cut = stop_cut(text, params.stop)
            text = text if cut is None else text[:cut]
        return Generation(text=text, token_ids=list(row.tokens), logprobs=list(row.logprobs),
                          finish_reason=row.finish, prompt_tokens=len(row.prompt) - row.cached,
                          cached_tokens=row.cached, time_s=row.time_s)


def set_weight_layout(model: torch.nn.Module, column_major: bool) -> None:
    """Re-stride every linear layer's weight in place, column-major or back to the ordinary
    row-major layout; values, shapes and parameter objects (so weight tying) stay the same."""
    weights = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)}
    with torch.inference_mode(False):  # normal tensors: the RL trainer differentiates them later
        for weight in weights.values():
            weight.data = weight.data.t().contiguous().t() if column_major else weight.data.contiguous()


def available_cores() -> int:
    """CPU cores this process may use: its affinity set, capped by a cgroup v2 CPU quota
    (containers often see every host core but may use only a few)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota = quota_cores(Path("/sys/fs/cgroup/cpu.max").read_text())
    except OSError:
        quota = None
    return max(1, min(cores, quota)) if quota else cores


def process_cores(local_processes: int | None = None) -> int:
    """This process's share of `available_cores`: the launcher's LOCAL_WORLD_SIZE processes on
    this machine (`accelerate launch`, `torchrun`) split the cores between them instead of
    each starting a thread per core, which oversubscribes the machine N times over.

    >>> import os; process_cores(1) == available_cores(), process_cores(10 * os.cpu_count()) >= 1
    (True, True)
    """
    n = local_processes if local_processes is not None else int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available_cores() // max(1, n))


def quota_cores(cpu_max: str) -> int | None:
    """Whole cores allowed by a cgroup v2 `cpu.max` line ("max" means no quota).

    >>> quota_cores("200000 100000"), quota_cores("150000 100000"), quota_cores("max 100000")
    (2, 1, None)
    """
    quota, _, period = cpu_max.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return max(1, int(quota) // int(period))
