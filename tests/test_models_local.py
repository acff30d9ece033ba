"""The local transformers engine, on the `tiny` built-in model (random weights, built in code):
batching, stop strings, rows leaving the batch, KV reuse across turns, seeds, log-probs."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from score_distill.models.base import Generation, GenRequest, SamplingParams
from score_distill.models.builtin import builtin_path
from score_distill.models.kv_engine import KVStore
from score_distill.models.load import load_model
from score_distill.models.local import LocalConfig, LocalModel

QUESTIONS = [
    "What is 2+2?",
    "Who wrote Hamlet? Answer briefly, with the full name of the author.",
    "x",
    "How many primes are below 30? Think step by step, then compute it in Python and print it.",
]


def convo(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": question}]


@pytest.fixture
def model(tiny_dir: Path) -> LocalModel:
    return LocalModel(tiny_dir)


def greedy(n: int = 24, stop: tuple[str, ...] = ()) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=n, stop=stop)


def count_rows_per_forward(model: LocalModel) -> list[int]:
    """Record the batch size of every forward pass (via a hook on the embedding layer)."""
    sizes: list[int] = []
    model.model.get_input_embeddings().register_forward_hook(lambda mod, inp, out: sizes.append(out.shape[0]))
    return sizes


def count_decoding_rows(model: LocalModel) -> list[int]:
    """The batch size of every decoding forward pass (one input column)."""
    sizes: list[int] = []
    model.model.get_input_embeddings().register_forward_hook(
        lambda mod, inp, out: sizes.append(out.shape[0]) if out.shape[1] == 1 else None)
    return sizes


def test_tiny_builds_deterministically(tmp_path: Path, tiny_dir: Path) -> None:
    again = builtin_path("tiny", root=tmp_path)
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    assert builtin_path("tiny", root=tmp_path) == again  # cached: no rebuild
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_batched_equals_one_by_one(model: LocalModel) -> None:
    batch = model.generate([GenRequest(convo(q)) for q in QUESTIONS], greedy())
    for q, got in zip(QUESTIONS, batch):
        [alone] = model.generate([GenRequest(convo(q))], greedy())
        assert got.token_ids == alone.token_ids
        assert got.text == alone.text
        assert got.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
        assert got.finish_reason == "length" and len(got.token_ids) == 24


def pick_stop(texts: list[str]) -> str:
    """A printable 2-character string whose first occurrences end the texts at the most
    varied places (so that rows finish at different steps)."""
    best, spread = "", -1
    for text in texts:
        for i in range(len(text) - 1):
            cand = text[i : i + 2]
            if not (cand.isascii() and cand.isprintable()):
                continue
            ends = {t.find(cand) for t in texts}
            if len(ends) > spread and all(t.find(cand) > 0 for t in texts[:2]):
                best, spread = cand, len(ends)
    assert best, "no printable stop candidate in the outputs"
    return best


def test_stop_string_ends_each_row_and_rows_leave_the_batch(model: LocalModel) -> None:
    requests = [GenRequest(convo(q)) for q in QUESTIONS]
    free = model.generate(requests, greedy(40))
    stop = pick_stop([g.text for g in free])
    sizes = count_decoding_rows(model)
    stopped = model.generate(requests, greedy(40, stop=(stop,)))
    for f, s in zip(free, stopped):
        if stop in f.text:
            cut = f.text.index(stop) + len(stop)
            assert s.finish_reason == "stop"
            assert s.text == f.text[:cut] and s.text.endswith(stop)
            assert s.token_ids == f.token_ids[: len(s.token_ids)]
            assert len(s.token_ids) < len(f.token_ids)
        else:
            assert s.token_ids == f.token_ids and s.finish_reason == "length"
    # After the prefill, one forward per step with only the rows still going.
    lengths = [len(s.token_ids) for s in stopped]
    assert sizes == [sum(n > step for n in lengths) for step in range(1, max(lengths))]
    assert sizes[-1] < sizes[0] == len(lengths)


def test_eos_finish_keeps_the_end_token_out_of_the_text(model: LocalModel) -> None:
    [free] = model.generate([GenRequest(convo(QUESTIONS[0]))], greedy(30))
    forced = model.eos_ids | {free.token_ids[5]}  # pretend the 6th token ends the message
    model.eos_ids = frozenset(forced)
    [gen] = model.generate([GenRequest(convo(QUESTIONS[0]))], greedy(30))
    assert gen.finish_reason == "eos"
    assert gen.token_ids == free.token_ids[: len(gen.token_ids)] and gen.token_ids[-1] in forced
    assert len(gen.logprobs) == len(gen.token_ids)
    assert gen.text == model.tokenizer.decode(gen.token_ids[:-1])


def continue_convo(messages: list[dict[str, str]], gen: Generation, obs: str) -> list[dict[str, str]]:
    return messages + [{"role": "assistant", "content": gen.text}, {"role": "user", "content": f"Observation: {obs}"}]


def test_kv_reuse_across_turns_matches_full_reencode(tiny_dir: Path) -> None:
    cached_model, fresh_model = LocalModel(tiny_dir), LocalModel(tiny_dir)
    convos = [convo(q) for q in QUESTIONS]
    keys = [f"traj-{i}" for i in range(len(convos))]
    for turn in range(3):
        with_cache = cached_model.generate([GenRequest(c, cache_key=k) for c, k in zip(convos, keys)], greedy(20))
        full = fresh_model.generate([GenRequest(c) for c in convos], greedy(20))
        for c, w, f in zip(convos, with_cache, full):
            assert w.token_ids == f.token_ids and w.text == f.text
            assert w.logprobs == pytest.approx(f.logprobs, abs=1e-4)
            assert w.prompt_tokens + w.cached_tokens == f.prompt_tokens == len(cached_model.encode(c))
            assert (w.cached_tokens > 0) == (turn > 0)
        # Observations of different lengths, so rows have different cached and new lengths.
        convos = [continue_convo(c, g, "ok " * (i * 3 + turn)) for i, (c, g) in enumerate(zip(convos, with_cache))]
    assert sum(w.prompt_tokens for w in with_cache) < sum(f.prompt_tokens for f in full) / 2


def test_release_and_eviction_drop_cached_state(tiny_dir: Path) -> None:
    model = LocalModel(tiny_dir)
    first = model.generate([GenRequest(convo(QUESTIONS[1]), cache_key="a")], greedy(8))
    nxt = continue_convo(convo(QUESTIONS[1]), first[0], "1")
    model.release("a")
    [again] = model.generate([GenRequest(nxt, cache_key="a")], greedy(8))
    assert again.cached_tokens == 0 and "a" in model.store
    # A budget below one trajectory's KV keeps nothing, and results do not change.
    model.clear_cache()
    assert len(model.store) == 0 and model.store.nbytes == 0
    small = LocalModel(tiny_dir, LocalConfig(cache_budget_mb=0))
    small.generate([GenRequest(convo(QUESTIONS[1]), cache_key="a")], greedy(8))
    [evicted] = small.generate([GenRequest(nxt, cache_key="a")], greedy(8))
    assert len(small.store) == 0 and small.store.evictions == 2
    assert evicted.cached_tokens == 0 and evicted.token_ids == again.token_ids


def test_seeded_sampling_does_not_depend_on_batch_neighbours(model: LocalModel) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=20, stop=())
    requests = [GenRequest(convo(q), seed=100 + i) for i, q in enumerate(QUESTIONS)]
    together = model.generate(requests, params)
    reversed_batch = model.generate(requests[::-1], params)[::-1]
    for i, req in enumerate(requests):
        [alone] = model.generate([req], params)
        assert together[i].token_ids == alone.token_ids == reversed_batch[i].token_ids
    [other_seed] = model.generate([GenRequest(convo(QUESTIONS[3]), seed=7)], params)
    assert other_seed.token_ids != together[3].token_ids
    [greedy_row] = model.generate([GenRequest(convo(QUESTIONS[3]))], greedy(20))
    assert together[3].token_ids != greedy_row.token_ids  # temperature 1 really samples


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_logprobs_match_a_full_forward_pass(model: LocalModel, temperature: float) -> None:
    params = SamplingParams(temperature=temperature, top_p=0.95, max_new_tokens=16, stop=(), seed=3)
    gens = model.generate([GenRequest(convo(q)) for q in QUESTIONS], params)
    for q, gen in zip(QUESTIONS, gens):
        prompt = model.encode(convo(q))
        ids = torch.tensor([prompt + gen.token_ids])
        with torch.inference_mode():
            logits = model.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        expected = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(gen.token_ids)[:, None]).squeeze(-1)
        assert all(math.isfinite(x) and x <= 0 for x in gen.logprobs)
        assert gen.logprobs == pytest.approx(expected.tolist(), abs=1e-4)


def test_time_shares_add_up_to_the_call(model: LocalModel) -> None:
    started = time.perf_counter()
    gens = model.generate([GenRequest(convo(q)) for q in QUESTIONS], greedy(12))
    wall = time.perf_counter() - started
    total = sum(g.time_s for g in gens)
    assert all(g.time_s > 0 for g in gens)
    assert 0.5 * wall < total <= wall


def test_conversation_longer_than_the_context_generates_nothing(tiny_dir: Path) -> None:
    model = LocalModel(tiny_dir)
    model.context = len(model.encode(convo(QUESTIONS[0])))
    [full, ok] = model.generate([GenRequest(convo(QUESTIONS[0])), GenRequest(convo("x"))], greedy(10))
    assert full.finish_reason == "length" and full.token_ids == [] and full.text == ""
    assert full.prompt_tokens == full.cached_tokens == 0
    assert len(ok.token_ids) == model.context - len(model.encode(convo("x")))


def test_kv_store_keeps_common_prefix_and_evicts_oldest() -> None:
    kv = [(torch.zeros(2, 4, 8), torch.zeros(2, 4, 8))]  # one layer, 4 tokens: 512 bytes
    store = KVStore(budget_bytes=1100)
    store.put("a", [1, 2, 3, 4], kv)
    store.put("b", [1, 2, 3, 4], kv)
    n, got = store.take("a", [1, 2, 9, 9, 9])
    assert n == 2 and got is not None and got[0][0].shape == (2, 2, 8) and "a" not in store
    assert store.take("b", [1, 2, 3, 4])[0] == 3  # one token is always left to prefill
    store.put("a", [1, 2, 3, 4], kv)
    store.put("b", [1, 2, 3, 4], kv)
    store.put("c", [1, 2, 3, 4], kv)
    assert "a" not in store and "b" in store and "c" in store and store.nbytes == 1024
    with pytest.raises(ValueError, match="covers 4 tokens"):
        store.put("d", [1, 2], kv)


def test_load_model_resolves_builtin_names_and_directories(tiny_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORE_DISTILL_CACHE", str(tmp_path))
    by_name = load_model("tiny", max_batch_size=2)
    assert isinstance(by_name, LocalModel) and by_name.name == "tiny" and by_name.config.max_batch_size == 2
    assert (tmp_path / "models" / "tiny" / "config.json").is_file()
    by_dir = load_model(str(tiny_dir))
    assert isinstance(by_dir, LocalModel) and by_dir.name == tiny_dir.name
    # Three requests with max_batch_size 2 run as two chunks and still match the directory's model.
    requests = [GenRequest(convo(q)) for q in QUESTIONS[:3]]
    assert [g.token_ids for g in by_name.generate(requests, greedy(6))] == \
        [g.token_ids for g in by_dir.generate(requests, greedy(6))]


@pytest.mark.slow
def test_smollm2_greedy_turn_matches_transformers_generate() -> None:
    model = LocalModel(builtin_path("smollm2-135m"))
    requests = [GenRequest([{"role": "user", "content": "What is the capital of France?"}]),
                GenRequest(convo(QUESTIONS[1]))]
    gens = model.generate(requests, greedy(12))
    assert gens[0].text.strip() and "Paris" in gens[0].text
    for req, gen in zip(requests, gens):
        prompt = torch.tensor([model.encode(req.messages)])
        with torch.inference_mode():
            ref = model.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                                       do_sample=False)[0, prompt.shape[1] :].tolist()
        assert gen.token_ids == ref


def test_sampling_follows_the_nucleus_distribution() -> None:
    """Frequencies of many seeded draws match the renormalised nucleus: tokens outside it
    never appear, and each row's draws depend on its own generator only."""
    from score_distill.models.sampling import choose_tokens

    probs = torch.tensor([0.5, 0.25, 0.15, 0.06, 0.04])
    logits = probs.log().expand(4000, -1).contiguous()
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    tokens, logprobs = choose_tokens(logits, 1.0, 0.85, gens)
    counts = torch.bincount(tokens, minlength=5).double() / 4000
    expected = torch.tensor([0.5, 0.25, 0.15, 0.0, 0.0]) / 0.9  # 0.5+0.25 < 0.85: the third is kept
    assert counts[3:].sum() == 0
    assert torch.allclose(counts, expected.double(), atol=0.03), counts
    assert torch.allclose(logprobs, probs.log()[tokens])  # untempered, unfiltered log-probs
    full, _ = choose_tokens(logits, 1.0, 1.0, [torch.Generator().manual_seed(i) for i in range(4000)])
    assert torch.allclose(torch.bincount(full, minlength=5).double() / 4000, probs.double(), atol=0.03)
    again, _ = choose_tokens(logits[:3], 1.0, 0.85, [torch.Generator().manual_seed(i) for i in range(3)])
    assert again.tolist() == tokens[:3].tolist()


def test_rows_joining_a_running_batch_decode_as_if_alone(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Continuous batching: at most 2 rows at a time, requests added while others decode
    (a long one joins a narrow batch, so the buffers must grow), some resuming from cached
    KV. Every row's tokens and log-probs equal those of the row generated alone."""
    from score_distill.models.kv_engine import BatchKV

    streamed, alone = LocalModel(tiny_dir), LocalModel(tiny_dir)
    questions = [QUESTIONS[2], " ".join(QUESTIONS * 6), QUESTIONS[0], QUESTIONS[3], QUESTIONS[1]]
    # First turns, so that the second turns below can start from cached KV.
    firsts = streamed.generate([GenRequest(convo(q), cache_key=f"k{i}") for i, q in enumerate(questions)], greedy(8))
    seconds = [continue_convo(convo(q), g, "ok " * i) for i, (q, g) in enumerate(zip(questions, firsts))]
    grown: list[int] = []
    real = BatchKV._reallocate
    monkeypatch.setattr(BatchKV, "_reallocate", lambda self, *a: (grown.append(1), real(self, *a))[1])
    sizes = count_rows_per_forward(streamed)
    stream = streamed.open_stream(greedy(30), max_rows=2)
    arrivals = {0: 0, 3: 1, 12: 2, 13: 3, 40: 4}  # decoding step -> request added then
    out: dict[int, Generation] = {}
    step = 0
    while stream.busy or step <= max(arrivals):
        if step in arrivals:
            i = arrivals[step]
            stream.add(i, GenRequest(seconds[i], cache_key=f"k{i}" if i % 2 == 0 else None))
        out.update(stream.step())
        step += 1
    assert grown and max(sizes) == 2 and sorted(out) == list(range(len(questions)))
    for i, msgs in enumerate(seconds):
        [ref] = alone.generate([GenRequest(msgs)], greedy(30))
        assert out[i].token_ids == ref.token_ids, i
        assert out[i].logprobs == pytest.approx(ref.logprobs, abs=1e-4)
        assert (out[i].cached_tokens > 0) == (i % 2 == 0)


def test_a_kv_bound_holds_rows_back_without_changing_them(tiny_dir: Path) -> None:
    """With `batch_kv_mb` too small for every row at once, requests wait at admission: the
    batch's buffers never pass the bound (beyond the one row that always runs), rows still
    join as others leave, and each row's tokens equal the unbounded engine's."""
    from score_distill.models.kv_engine import BatchKV

    free = LocalModel(tiny_dir)
    questions = [" ".join(QUESTIONS * (1 + i % 3)) for i in range(8)]
    params = greedy(16)
    wide = free.generate([GenRequest(convo(q)) for q in questions], params)
    per_row = max(len(free.encode(convo(q))) for q in questions) + 16 + 2 * 256
    limit_mb = 2  # buffers get a quarter more rows than run (kv_engine.grown): 2 rows take 3
    assert 3 * per_row * free.kv_bytes_per_token <= (limit_mb << 20) < 10 * per_row * free.kv_bytes_per_token
    bounded = LocalModel(tiny_dir, LocalConfig(batch_kv_mb=limit_mb))
    sizes = count_rows_per_forward(bounded)
    held: list[int] = []
    real = BatchKV.append_column
    BatchKV.append_column = lambda self: (held.append(sum(l.buf_k.nbytes + l.buf_v.nbytes for l in self.layers)),
                                          real(self))[1]
    try:
        narrow = bounded.generate([GenRequest(convo(q)) for q in questions], params)
    finally:
        BatchKV.append_column = real
    assert [g.token_ids for g in narrow] == [g.token_ids for g in wide]
    assert 1 < max(sizes) < len(questions)  # fewer rows at once, more than one
    assert max(held) <= limit_mb << 20


def test_the_decoding_layout_keeps_the_model_and_its_outputs(tiny_dir: Path) -> None:
    """Column-major weights while decoding: same tokens and log-probs as the ordinary layout,
    tied weights still tied, and `training_layout` gives back contiguous weights with the
    same values (what the optimizer and `save_pretrained` need). (The layout of the
    transformers decoding step: the lean step keeps copies of its own, test_lean_decode.py.)"""
    plain = LocalModel(tiny_dir, LocalConfig(column_major=False, lean_decode=False))
    fast = LocalModel(tiny_dir, LocalConfig(lean_decode=False))
    before = {k: v.clone() for k, v in fast.model.state_dict().items()}
    requests = [GenRequest(convo(q)) for q in QUESTIONS]
    want, got = plain.generate(requests, greedy()), fast.generate(requests, greedy())
    assert [g.token_ids for g in got] == [g.token_ids for g in want]
    for a, b in zip(got, want):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    linears = [m.weight for m in fast.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(w.stride() == (1, w.shape[0]) for w in linears)  # column-major now
    assert all(w.stride() == (w.shape[1], 1) for m in plain.model.modules()
               if isinstance(m, torch.nn.Linear) for w in [m.weight])
    embed = fast.model.get_input_embeddings().weight
    if fast.model.config.tie_word_embeddings:
        assert fast.model.get_output_embeddings().weight is embed
    fast.training_layout()
    assert all(w.is_contiguous() for w in linears)
    for k, v in fast.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_sample_after_an_update_comes_from_the_new_weights(tiny_dir: Path, tmp_path: Path) -> None:
    """The RL trainer updates the engine's own model between rollouts: after switching back to
    the training layout, stepping an optimizer and clearing the cache, the next sample's
    log-probs are those of the new weights (a fresh engine loaded with them), not the old."""
    engine = LocalModel(tiny_dir)
    request = [GenRequest(convo(QUESTIONS[1]), cache_key="t")]
    [old] = engine.generate(request, greedy(8))
    engine.training_layout()
    engine.model.train()
    optimizer = torch.optim.AdamW(engine.model.parameters(), lr=0.05, fused=True)
    ids = torch.tensor([engine.encode(convo(QUESTIONS[1]))])
    engine.model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    engine.model.eval()
    engine.clear_cache()
    [new] = engine.generate(request, greedy(8))
    updated = tmp_path / "updated"
    engine.training_layout()
    engine.model.save_pretrained(updated)  # needs the ordinary layout
    engine.tokenizer.save_pretrained(updated)
    [fresh] = LocalModel(updated, LocalConfig(column_major=False)).generate(request, greedy(8))
    assert new.token_ids == fresh.token_ids
    assert new.logprobs == pytest.approx(fresh.logprobs, abs=1e-4)
    assert new.logprobs != pytest.approx(old.logprobs, abs=1e-3)


def test_rows_admitted_together_prefill_their_shared_prefix_once(tiny_dir: Path) -> None:
    """Identical prompts (an RL group) and a common system prompt are prefilled once: far fewer
    row-tokens go through the model, yet every row's tokens, log-probs and accounting are
    those it gets alone."""
    model = LocalModel(tiny_dir)
    system = {"role": "system", "content": "You are an agent. Solve the task step by step, and check it."}
    group = [GenRequest([system, {"role": "user", "content": QUESTIONS[3]}], seed=s) for s in range(3)]
    other = [GenRequest([system, {"role": "user", "content": q}], seed=9) for q in QUESTIONS[:2]]
    requests = group + other
    prompts = [model.encode(r.messages) for r in requests]
    assert min(len(p) for p in prompts) > 40
    params = SamplingParams(temperature=1.0, max_new_tokens=12, stop=())
    alone = [model.generate([r], params)[0] for r in requests]
    fed: list[int] = []
    model.model.get_input_embeddings().register_forward_hook(lambda m, i, o: fed.append(o.shape[0] * o.shape[1]))
    together = model.generate(requests, params)
    for a, b, p in zip(together, alone, prompts):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        assert (a.prompt_tokens, a.cached_tokens) == (b.prompt_tokens, b.cached_tokens) == (len(p), 0)
    decoded = sum(len(g.token_ids) - 1 for g in together)  # one forward row per token but the last
    prefilled = sum(fed) - decoded
    assert prefilled < sum(len(p) for p in prompts) - 2 * (len(prompts[0]) - 20)


def test_a_request_held_back_is_encoded_once(tiny_dir: Path) -> None:
    """A request waiting at admission for the KV bound is rendered by the chat template once,
    not at every decoding step it waits through."""
    bounded = LocalModel(tiny_dir, LocalConfig(batch_kv_mb=1))
    questions = [" ".join(QUESTIONS * 3) for _ in range(3)]
    encoded: list[int] = []
    real = bounded.encode
    bounded.encode = lambda messages: (encoded.append(1), real(messages))[1]
    sizes = count_decoding_rows(bounded)
    gens = bounded.generate([GenRequest(convo(q)) for q in questions], greedy(16))
    assert max(sizes) == 1 and len(sizes) > 2 * 15  # one row at a time: the others waited
    assert len(encoded) == len(questions)
    assert all(g.token_ids for g in gens)
