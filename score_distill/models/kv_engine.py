"""KV-cache machinery for the local engine: a batch cache that rows can leave cheaply, and a
per-trajectory store that carries each row's keys/values from one turn to the next.

Layout of a batch (one row per conversation, columns are time):

    row 0:  [pad pad c c c c | pad s s]   c = cached KV reused from the store
    row 1:  [c c c c c c c c | s s s s]   s = new prompt suffix, prefilled now
            <--- cached C ---> <-- S -->   then one column per generated token

Each row's cached KV is right-aligned in the first C columns and its new tokens are
right-aligned in the next S columns, so padding may sit in the middle of a row. The 2D
attention mask is 0 on padding and position ids are `cumsum(mask) - 1`, so every real token
gets the RoPE position it would have in an unpadded sequence.

`BufferLayer` keeps a layer's KV in one preallocated `(rows, heads, capacity, dim)` buffer
and hands the model views of it: decoding appends in place (no per-step concatenation), and
a finished row leaves by having the last live row copied into its slot (one row's copy, not
the whole batch's). `BatchKV.admit` lets rows join a running batch: they are prefilled as a
batch of their own, then their columns are copied in, right-aligned with the running batch's
last column (its buffers grow, with slack, when they do not fit). `KVStore` keeps, per cache
key, the token ids seen so far and that row's KV trimmed to its valid positions, under an
LRU memory budget.

    store = KVStore(budget_bytes=2 << 30)
    reused, kv = store.take("traj-1", prompt_ids)   # longest common prefix with what is cached
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

# Per layer: (keys, values), each (heads, tokens, head_dim) for one row.
RowKV = list[tuple[torch.Tensor, torch.Tensor]]
# Extra columns reserved when a batch's buffers grow, so that rows joining later rarely
# trigger another copy.
SLACK = 256


def grown(rows: int) -> int:
    """Rows to allocate for `rows` live ones: a quarter more, so that rows joining one by one
    rarely trigger a copy, without holding buffers for rows that may never come.

    >>> grown(1), grown(20), grown(48)
    (2, 25, 60)
    """
    return rows + max(1, rows // 4)


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token id lists.

    >>> common_prefix([1, 2, 3, 4], [1, 2, 9])
    2
    >>> common_prefix([], [5])
    0
    """
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def compaction_moves(finished: list[bool]) -> tuple[list[tuple[int, int]], list[int]]:
    """How to close the holes left by finished rows: `(src, dst)` copies that move live rows
    from the end of the batch into the holes, and the old index of each row after the moves.

    >>> compaction_moves([False, True, False, True])
    ([(2, 1)], [0, 2])
    >>> compaction_moves([True, False, False])
    ([(2, 0)], [2, 1])
    """
    keep = [i for i, done in enumerate(finished) if not done]
    order = list(range(len(finished)))
    moves: list[tuple[int, int]] = []
    holes = [i for i in range(len(keep)) if finished[i]]
    tail = [i for i in keep if i >= len(keep)]
    for dst, src in zip(holes, tail):
        moves.append((src, dst))
        order[dst] = src
    return moves, order[: len(keep)]


class BufferLayer(CacheLayerMixin):
    """One attention layer's KV for a batch, in a preallocated buffer; the model sees the view
    `buf[:rows, :, start:end]`. Implements the transformers cache-layer interface."""

    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int) -> None:
        super().__init__()
        self.buf_k, self.buf_v = keys, values  # (rows, heads, capacity, dim)
        self.rows, self.start, self.end = keys.shape[0], 0, filled
        self.is_initialized = True
        self._refresh()

    def _refresh(self) -> None:
        self.keys = self.buf_k[: self.rows, :, self.start : self.end]
        self.values = self.buf_v[: self.rows, :, self.start : self.end]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("BufferLayer is created already filled")  # never called: is_initialized is set

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object,
               **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        t = key_states.shape[-2]
        if self.end + t > self.buf_k.shape[2]:
            raise RuntimeError(f"KV buffer overflow: {self.end}+{t} > {self.buf_k.shape[2]}")  # our sizing bug
        self.buf_k[: self.rows, :, self.end : self.end + t] = key_states
        self.buf_v[: self.rows, :, self.end : self.end + t] = value_states
        self.end += t
        self._refresh()
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self.end - self.start

    def get_max_length(self) -> int:
        return -1

    def compact(self, moves: list[tuple[int, int]], rows: int, start: int) -> None:
        """Apply row moves, keep `rows` rows, and drop the columns before `start`."""
        for src, dst in moves:
            self.buf_k[dst, :, start : self.end] = self.buf_k[src, :, start : self.end]
            self.buf_v[dst, :, start : self.end] = self.buf_v[src, :, start : self.end]
        self.rows, self.start = rows, start
        self._refresh()


@dataclass
class BatchLayout:
    """Where each row's cached and new tokens sit in the batch (see the module docstring)."""

    cached: list[int]  # cached tokens per row
    suffix: list[int]  # new prompt tokens per row
    width_cached: int  # C
    width_suffix: int  # S

    @staticmethod
    def of(cached: list[int], suffix: list[int]) -> BatchLayout:
        return BatchLayout(cached, suffix, max(cached, default=0), max(suffix, default=0))


class BatchKV:
    """The KV cache and attention mask of a decoding batch. Build it with `build`, pass
    `cache` to the model, grow `mask` with `append_column`, and remove rows with `compact`."""

    def __init__(self, layers: list[BufferLayer], mask: torch.Tensor) -> None:
        self.layers = layers
        self.cache = Cache(layers=list(layers))
        self._mask_buf = mask  # (rows, capacity) long, 1 on real tokens
        self.rows = mask.shape[0]

    @property
    def start(self) -> int:
        """First column still in use (the layers advance `end` themselves as the model runs)."""
        return self.layers[0].start

    @property
    def end(self) -> int:
        return self.layers[0].end

    @staticmethod
    def build(rows_kv: list[RowKV | None], layout: BatchLayout, capacity: int, n_layers: int,
              kv_shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> BatchKV:
        """A batch whose first C columns hold each row's cached KV, right-aligned, and whose
        mask already covers the S suffix columns (which the prefill will fill). Buffers start
        at zero: padding is never attended, but a masked NaN would still poison the output."""
        b, width = len(rows_kv), layout.width_cached
        heads, dim = kv_shape
        mask = torch.zeros(b, capacity, dtype=torch.long, device=device)
        layers = []
        for li in range(n_layers):
            k = torch.zeros(b, heads, capacity, dim, dtype=dtype, device=device)
            v = torch.zeros_like(k)
            for r, row in enumerate(rows_kv):
                c = layout.cached[r]
                if row is not None and c:
                    k[r, :, width - c : width] = row[li][0][:, :c]
                    v[r, :, width - c : width] = row[li][1][:, :c]
            layers.append(BufferLayer(k, v, width))
        for r in range(b):
            mask[r, width - layout.cached[r] : width] = 1
            mask[r, width + layout.width_suffix - layout.suffix[r] : width + layout.width_suffix] = 1
        return BatchKV(layers, mask)

    def admit(self, other: BatchKV, room: int, max_rows: int) -> None:
        """Append the live rows of `other` (a batch just prefilled on its own) after this
        batch's rows, their columns right-aligned with this batch's end, so the next decoding
        step runs them all together; keep at least `room` free columns after the end.

        The buffers grow (one copy of the used window) only when the rows, the columns left of
        the end, or the room do not fit; the slack added then makes that rare."""
        width, rows = other.end - other.start, self.rows + other.rows
        left = max(width, self.end - self.start)
        if rows > self._mask_buf.shape[0] or left > self.end or self.end + room > self._mask_buf.shape[1]:
            # sized to the rows running now: rows that left give their memory back here
            self._reallocate(min(max_rows, grown(rows)), left + SLACK, room + SLACK)
        lo, end = self.end - width, self.end
        start = min(lo, self.start)
        self._mask_buf[: self.rows, start : self.start] = 0  # stale flags of rows that left
        self._mask_buf[self.rows : rows, start:end] = 0
        self._mask_buf[self.rows : rows, lo:end] = other._mask_buf[: other.rows, other.start : other.end]
        for layer, src in zip(self.layers, other.layers):
            layer.buf_k[self.rows : rows, :, lo:end] = src.buf_k[: other.rows, :, src.start : src.end]
            layer.buf_v[self.rows : rows, :, lo:end] = src.buf_v[: other.rows, :, src.start : src.end]
            layer.rows, layer.start = rows, start
            layer._refresh()
        self.rows = rows

    def _reallocate(self, rows: int, left: int, right: int) -> None:
        """Move the used window into new zeroed buffers of `rows` rows with `left` columns up
        to the end and `right` after it."""
        used, end = self.end - self.start, left
        mask = self._mask_buf.new_zeros(rows, left + right)
        mask[: self.rows, end - used : end] = self._mask_buf[: self.rows, self.start : self.end]
        self._mask_buf = mask
        for layer in self.layers:
            k = layer.buf_k.new_zeros(rows, layer.buf_k.shape[1], left + right, layer.buf_k.shape[3])
            v = torch.zeros_like(k)
            k[: self.rows, :, end - used : end] = layer.buf_k[: self.rows, :, layer.start : layer.end]
            v[: self.rows, :, end - used : end] = layer.buf_v[: self.rows, :, layer.start : layer.end]
            layer.buf_k, layer.buf_v, layer.start, layer.end = k, v, end - used, end
            layer._refresh()

    def mask(self, extra: int) -> torch.Tensor:
        """The 2D mask over the cached columns plus the next `extra` input columns."""
        return self._mask_buf[: self.rows, self.start : self.end + extra]

    def positions(self, extra: int) -> torch.Tensor:
        """Position ids `(rows, extra)` of the next `extra` input columns: `cumsum(mask) - 1`,
        clamped at 0 for padding (whose position does not matter: it is never attended)."""
        return (self.mask(extra).cumsum(-1) - 1).clamp(min=0)[:, -extra:]

    def append_column(self) -> None:
        """Mark the next column as a real token for every live row (one decoding step)."""
        self._mask_buf[: self.rows, self.end] = 1

    def row_kv(self, row: int) -> RowKV:
        """Row `row`'s KV at its valid positions, copied out of the batch buffers."""
        valid = self._mask_buf[row, self.start : self.end].nonzero().squeeze(-1) + self.start
        return [(layer.buf_k[row].index_select(1, valid), layer.buf_v[row].index_select(1, valid))
                for layer in self.layers]

    def compact(self, finished: list[bool]) -> list[int]:
        """Remove finished rows (moving live rows from the end into their slots) and drop the
        leading columns no live row uses. Returns the old index of each remaining row."""
        moves, order = compaction_moves(finished)
        rows = len(order)
        for src, dst in moves:
            self._mask_buf[dst, self.start : self.end] = self._mask_buf[src, self.start : self.end]
        used = self._mask_buf[:rows, self.start : self.end].any(0).nonzero()
        start = self.start + (int(used[0]) if len(used) else 0)
        for layer in self.layers:
            layer.compact(moves, rows, start)
        self.rows = rows
        if rows and grown(rows) < self._mask_buf.shape[0] // 2:  # give back most of the rows that left
            self._reallocate(grown(rows), self.end - self.start, self._mask_buf.shape[1] - self.end)
        return order


@dataclass
class _Entry:
    ids: list[int]
    kv: RowKV
    nbytes: int


class KVStore:
    """Per cache key: the token ids processed so far and their KV, least recently used entries
    evicted first once the total passes `budget_bytes`."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.nbytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        """Cached keys, least recently stored first."""
        return list(self._entries)

    def take(self, key: str | None, ids: list[int]) -> tuple[int, RowKV | None]:
        """How many leading tokens of `ids` have cached KV, and that KV. The entry leaves the
        store (the caller puts the extended state back when the turn ends), so a batch does
        not hold two copies. At least one token is always left to prefill: the model needs an
        input to produce the next token's logits."""
        entry = self._entries.get(key) if key is not None else None
        if entry is None:
            return 0, None
        self.release(key)  # type: ignore[arg-type]
        n = min(common_prefix(entry.ids, ids), len(ids) - 1)
        if n <= 0:
            return 0, None
        return n, [(k[:, :n], v[:, :n]) for k, v in entry.kv]

    def put(self, key: str, ids: list[int], kv: RowKV) -> None:
        """Store the state of `key` (replacing any older one), then evict to the budget."""
        if len(kv) and kv[0][0].shape[1] != len(ids):
            raise ValueError(f"KV covers {kv[0][0].shape[1]} tokens but {len(ids)} ids were given")
        self.release(key)
        nbytes = sum(k.nbytes + v.nbytes for k, v in kv)
        self._entries[key] = _Entry(list(ids), kv, nbytes)
        self.nbytes += nbytes
        while self.nbytes > self.budget_bytes and self._entries:
            oldest = next(iter(self._entries))
            self.release(oldest)
            self.evictions += 1

    def release(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.nbytes -= entry.nbytes
