"""The lean decoding step against the transformers forward it replaces."""

import torch

from score_distill.models import lean_decode
from score_distill.models.base import GenRequest, SamplingParams
from score_distill.models.builtin import builtin_path
from score_distill.models.kv_engine import BatchKV, BatchLayout
from score_distill.models.local import LocalConfig, LocalModel

MESSAGES = [[{"role": "user", "content": f"What is {i} plus {7 * i}? Think step by step." + " Why?" * i}]
            for i in range(5)]


def _generate(model: LocalModel, n: int = 24) -> list:
    params = SamplingParams(max_new_tokens=n, temperature=0.0, stop=("</code>",))
    return model.generate([GenRequest(m, cache_key=f"k{i}") for i, m in enumerate(MESSAGES)], params)


def _step_logits(config: LocalConfig, steps: int = 3, messages: list = MESSAGES) -> torch.Tensor:
    """Logits (steps, B, V) of decoding steps fed the same tokens, after prefilling prompts of
    different lengths (so rows carry padding) through the transformers forward."""
    model = LocalModel(builtin_path("tiny"), config)
    prompts = [model.encode(m) for m in messages]
    layout = BatchLayout.of([0] * len(prompts), [len(p) for p in prompts])
    batch = BatchKV.build([None] * len(prompts), layout, layout.width_suffix + steps, model.n_layers,
                          model.kv_shape, model.kv_dtype(), model.device)
    out = []
    with torch.inference_mode():
        model._prefill_ids(batch, prompts, layout.width_suffix)
        model.decoding_layout()
        for s in range(steps):
            batch.append_column()
            out.append(model.forward(batch, torch.tensor([[7 + s + r] for r in range(len(prompts))])))
    return torch.stack(out)


def test_a_lean_step_computes_the_transformers_step():
    reference = _step_logits(LocalConfig(dtype="float32", lean_decode=False))
    assert torch.allclose(_step_logits(LocalConfig(dtype="float32")), reference, atol=1e-4)
    # In bf16 neither is exact: the lean step rounds attention scores to bf16 (its batched
    # matmul's output dtype) where the fused kernel keeps them in fp32. Its error against
    # the fp32 step stays of the same size as the transformers bf16 step's.
    for bf16 in (dict(dtype="bfloat16"), dict(dtype="float32", autocast_bf16=True)):
        plain_err = (_step_logits(LocalConfig(lean_decode=False, **bf16)) - reference).abs().max()
        lean_err = (_step_logits(LocalConfig(**bf16)) - reference).abs().max()
        assert lean_err <= 2 * plain_err + 1e-3, (bf16, float(lean_err), float(plain_err))


def test_rows_of_very_different_widths_attend_in_groups_with_the_same_result(monkeypatch):
    long = [[{"role": "user", "content": "Tell me more." * 150}]]
    messages = long + MESSAGES[:2] + long + MESSAGES[2:]  # two rows ~600 tokens wider than the others
    split = []
    real = lean_decode.width_groups
    monkeypatch.setattr(lean_decode, "width_groups", lambda starts, width: split.append(real(starts, width)) or split[-1])
    reference = _step_logits(LocalConfig(dtype="float32", lean_decode=False), messages=messages)
    lean = _step_logits(LocalConfig(dtype="float32"), messages=messages)
    assert split and all(sorted(r for rows, _ in g for r in rows) == list(range(7)) for g in split)
    assert all(len(g) == 2 and sorted(g[0][0]) == [0, 3] for g in split), split  # the wide rows apart
    assert torch.allclose(lean, reference, atol=1e-4)


def test_lean_steps_give_the_transformers_tokens_in_fp32(monkeypatch):
    steps = []
    real = lean_decode.LeanDecoder.step
    monkeypatch.setattr(lean_decode.LeanDecoder, "step", lambda self, *a: steps.append(1) or real(self, *a))
    path = builtin_path("tiny")
    plain = _generate(LocalModel(path, LocalConfig(dtype="float32", lean_decode=False)))
    assert not steps
    lean = _generate(LocalModel(path, LocalConfig(dtype="float32")))
    assert steps, "the lean step was not used"
    for a, b in zip(plain, lean):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)


def test_the_lean_copies_follow_a_weight_update():
    model = LocalModel(builtin_path("tiny"), LocalConfig())
    before = _generate(model)
    with torch.no_grad():
        model.model.model.layers[0].mlp.up_proj.weight.mul_(-3.0)  # in place, as an optimizer step is
    model.clear_cache()
    after = _generate(model)
    fresh = LocalModel(builtin_path("tiny"), LocalConfig(lean_decode=False))
    with torch.no_grad():
        fresh.model.model.layers[0].mlp.up_proj.weight.mul_(-3.0)
    assert [g.token_ids for g in after] == [g.token_ids for g in _generate(fresh)]
    assert [g.token_ids for g in after] != [g.token_ids for g in before]


def test_models_it_does_not_know_decode_through_transformers():
    model = LocalModel(builtin_path("tiny"), LocalConfig())
    model.model.config.model_type = "gpt2"
    assert "gpt2" in lean_decode.lean_unsupported(model.model)
    model.decoding_layout()
    assert model._lean is None
