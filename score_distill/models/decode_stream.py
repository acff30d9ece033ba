"""The local engine's running batch: continuous batching of decoding rows (`DecodeStream`)
and the state of one row (`Row`). `LocalModel.open_stream` makes a stream; the model itself
(weights, tokenizer, prefill and forward passes, the KV store) is in `local.py`, and the
stream drives it through the public methods listed in `LocalModel`'s docstring.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Hashable

import torch

from score_distill.models.base import Generation, GenRequest, SamplingParams
from score_distill.models.kv_engine import SLACK, BatchKV, BatchLayout, RowKV, grown
from score_distill.models.sampling import choose_tokens
from score_distill.models.stops import tail_window

if TYPE_CHECKING:
    from score_distill.models.local import LocalModel


# The shortest prefix worth a forward pass of its own when rows share it.
MIN_SHARED = 16
# Padded prompt columns a prefill may carry before its rows are split into two passes.
PREFILL_WASTE = 64


@dataclass
class Row:
    """Decoding state of one request."""

    tag: Hashable
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
    shared: int = 0  # prompt tokens after `cached` whose KV was prefilled once for several rows

    @property
    def known(self) -> int:
        """Leading prompt tokens whose KV the row holds before its own prefill."""
        return self.cached + self.shared

    @property
    def suffix(self) -> list[int]:
        return self.prompt[self.known :]


class DecodeStream:
    """Continuous batching over the local engine: requests join the running batch at the
    next step (their new prompt tokens prefilled on their own, then their KV copied in next
    to the others'), and finished rows leave at once. In an agent rollout the rows of a
    batch end their turns at very different lengths; with one `generate` call per turn the
    batch would shrink to its slowest row while the others wait for their tool calls.

    A row's tokens depend only on its own request, seed and cache, never on its neighbours
    (up to floating-point reordering), so the order of joins does not change results."""

    continuous = True

    def __init__(self, engine: LocalModel, params: SamplingParams, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.engine, self.params, self.max_rows = engine, params, max_rows
        self.window = tail_window(params.stop)
        self._waiting: list[tuple[Hashable, GenRequest]] = []
        self._held: tuple[GenRequest, list[int]] | None = None  # a request held back, encoded once
        self._live: list[Row] = []
        self._batch: BatchKV | None = None
        self._logits = torch.empty(0)  # (rows, V): next-token logits of the live rows
        self._admitted = 0

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self._live)

    def add(self, tag: Hashable, request: GenRequest) -> None:
        self._waiting.append((tag, request))

    @torch.inference_mode()
    def step(self) -> list[tuple[Hashable, Generation]]:
        """Admit waiting requests while rows are free, then sample one token for every live
        row and run one forward pass for those that go on."""
        model = self.engine.model
        training = model.training  # the RL trainer shares this model; sample in eval mode
        if training:  # (switching walks every module: ~10 ms a step, so only when needed)
            model.eval()
        self.engine.decoding_layout()
        try:
            done = self._admit()
            if self._live:
                done += self._advance()
            return done
        finally:
            if training:
                model.train()

    def _admit(self) -> list[tuple[Hashable, Generation]]:
        engine, free = self.engine, self.max_rows - len(self._live)
        rows, done = [], []
        while self._waiting and len(rows) < free:
            tag, request = self._waiting[0]
            held = self._held
            ids = held[1] if held is not None and held[0] is request else engine.encode(request.messages)
            if not self._fits(rows, len(ids), engine.budget(ids, self.params)):
                self._held = (request, ids)
                break  # it waits, first in line, for rows to leave
            self._waiting.pop(0)
            self._held = None
            row = engine.start_row(tag, request, self.params, self._admitted, ids)
            self._admitted += 1
            if row.budget <= 0:  # the conversation already fills the context: nothing to run
                row.finish, row.prompt, row.cached = "length", [], 0
                done.append((tag, engine.row_result(row, self.params)))
            else:
                rows.append(row)
        if not rows:
            return done
        engine.share_prefixes(rows)
        for group in prefill_groups(rows):
            self._join(group)
        return done

    def _join(self, rows: list[Row]) -> None:
        """Prefill `rows` as a batch of their own and add them to the running batch."""
        engine = self.engine
        layout = BatchLayout.of([r.known for r in rows], [len(r.suffix) for r in rows])
        capacity = layout.width_cached + layout.width_suffix + max(r.budget for r in rows)
        batch = BatchKV.build([r.kv for r in rows], layout, capacity, engine.n_layers, engine.kv_shape,
                              engine.kv_dtype(), engine.device)
        for row in rows:
            row.kv = None  # the batch holds its own copy now
        logits = engine.prefill(batch, rows, layout)
        if self._batch is None:
            self._batch, self._logits = batch, logits
        else:
            room = max(r.budget - len(r.tokens) for r in self._live + rows)
            self._batch.admit(batch, room, self.max_rows)
            self._logits = torch.cat([self._logits, logits])
        self._live += rows

    def _fits(self, joining: list[Row], width: int, budget: int) -> bool:
        """Whether the batch, with `joining` and one more row of `width` prompt tokens and
        `budget` new ones added, stays within `batch_kv_mb` as its buffers would be allocated
        (`BatchKV.admit`): a quarter more rows than run, each as wide as the widest row plus
        the largest token budget left plus the slack on both sides. An empty batch always
        takes a row."""
        limit = self.engine.config.batch_kv_mb << 20
        if not limit or budget <= 0 or not (self._live or joining):
            return True
        widths = [width] + [len(r.prompt) for r in joining]
        rooms = [budget] + [r.budget for r in joining] + [r.budget - len(r.tokens) for r in self._live]
        if self._batch is not None:
            widths.append(self._batch.end - self._batch.start)
        rows = grown(len(self._live) + len(joining) + 1)
        return rows * (max(widths) + max(rooms) + 2 * SLACK) * self.engine.kv_bytes_per_token <= limit

    def _advance(self) -> list[tuple[Hashable, Generation]]:
        engine, live, batch = self.engine, self._live, self._batch
        assert batch is not None
        started = time.perf_counter()
        tokens, logprobs = choose_tokens(self._logits, self.params.temperature, self.params.top_p,
                                         [r.generator for r in live])
        finished = [engine.append_token(r, t, lp, self.params, self.window) for r, t, lp in
                    zip(live, tokens.tolist(), logprobs.tolist())]
        charge_time(live, started)
        done = []
        if any(finished):
            for pos, (row, end) in enumerate(zip(live, finished)):
                if end:
                    # The last sampled token was never fed to the model: the KV covers
                    # prompt + tokens[:-1].
                    if row.key is not None:
                        engine.store.put(row.key, row.prompt + row.tokens[:-1], batch.row_kv(pos))
                    done.append((row.tag, engine.row_result(row, self.params)))
            if all(finished):
                self._live, self._batch = [], None
                return done
            live = self._live = [live[i] for i in batch.compact(finished)]
        started = time.perf_counter()
        step = torch.tensor([[r.tokens[-1]] for r in live], device=engine.device)
        batch.append_column()
        self._logits = engine.forward(batch, step)
        charge_time(live, started)
        return done


def prefill_groups(rows: list[Row], waste: int = PREFILL_WASTE) -> list[list[Row]]:
    """Rows to prefill together: by suffix length, a new group whenever padding every row to
    the group's longest suffix would cost more than `waste` columns in all (a forward pass
    of its own costs about as much as that many padded tokens on a CPU).

    >>> [[len(r.suffix) for r in g] for g in prefill_groups([Row(0, None, [0] * n, 0, None, 1, None)
    ...                                                    for n in (300, 1, 20, 2)], waste=64)]
    [[1, 2, 20], [300]]
    """
    groups: list[list[Row]] = []
    for row in sorted(rows, key=lambda r: len(r.suffix)):
        group = groups[-1] if groups else None
        if group is not None and ((len(group) + 1) * len(row.suffix)
                                  - sum(len(r.suffix) for r in group + [row])) <= waste:
            group.append(row)
        else:
            groups.append([row])
    return groups


def charge_time(rows: list[Row], started: float) -> None:
    """Split the wall time since `started` equally among `rows`."""
    share = (time.perf_counter() - started) / len(rows)
    for row in rows:
        row.time_s += share
