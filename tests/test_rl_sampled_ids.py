"""RL on the ids its engine sampled: the truncated importance weights against the sampler's
log-probs (the maths on small tensors, then logged by whole runs), and the weight sync after
every update, through our engine and through a fake engine shaped like vLLM's in-process
`LLM` that samples from its own copy of the weights."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from score_distill.config import UsageError
from score_distill.models.stops import stop_cut
from score_distill.train import rl_models
from score_distill.train.batches import pad_left
from score_distill.train.grpo import Scored, clipped_loss, truncated_is_weights, update
from score_distill.train.logprobs import token_logprobs
from score_distill.train.rl import RLOptions, train_rl
from tests.test_rl import TOOLS, CodeTeacher, build_word_model, options, word_items
from tests.test_vllm_engine import FakeSamplingParams

# ---------------------------------------------------------------- the importance-weight maths


def test_weights_are_the_capped_ratio_of_trainer_to_sampler():
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0, -1.0]])
    sampler = torch.tensor([[-1.0, -1.5, -3.0, -0.5, float("nan")]])  # ratios 1, e^.5, e^2 (> 2), e^-.5, none
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]])
    w, st = truncated_is_weights(old, sampler, mask, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, math.exp(0.5), 2.0, math.exp(-0.5), 1.0]]))
    assert st.tokens == 4 and st.truncated == 1
    assert st.abs_diff == pytest.approx(0.0 + 0.5 + 2.0 + 0.5)
    assert st.weight == pytest.approx(1.0 + math.exp(0.5) + 2.0 + math.exp(-0.5))
    # Masked positions count for nothing and weigh 1; cap 0 switches the correction off but
    # still measures the mismatch.
    w, st = truncated_is_weights(old, sampler, torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]]), cap=2.0)
    assert w.tolist() == [[1.0, 1.0, 2.0, 1.0, 1.0]] and (st.tokens, st.abs_diff, st.truncated) == (1, 2.0, 1)
    w, st = truncated_is_weights(old, sampler, mask, cap=0.0)
    assert torch.equal(w, torch.ones_like(w)) and st.truncated == 0 and st.abs_diff == pytest.approx(3.0)
    # No overflow for a sampler that put (almost) no mass on the token.
    w, _ = truncated_is_weights(torch.zeros(1, 1), torch.full((1, 1), -1e4), torch.ones(1, 1), cap=2.0)
    assert w.item() == 2.0


def test_the_weight_scales_the_policy_gradient_and_not_the_kl():
    logp = torch.zeros(1, 2, requires_grad=True)
    w = torch.tensor([[2.0, 0.5]])
    loss, _ = clipped_loss(logp, logp.detach(), torch.tensor([3.0]), torch.ones(1, 2), 0.2, is_weight=w)
    loss.backward()
    assert logp.grad.tolist() == [[-6.0, -1.5]]  # -w * A at ratio 1
    logp2 = torch.zeros(1, 1, requires_grad=True)
    ref = torch.tensor([[-1.0]])
    plain, _ = clipped_loss(logp2, logp2.detach(), torch.tensor([0.0]), torch.ones(1, 1), 0.2, ref, 0.5)
    weighted, _ = clipped_loss(logp2, logp2.detach(), torch.tensor([0.0]), torch.ones(1, 1), 0.2, ref, 0.5,
                               is_weight=torch.tensor([[2.0]]))
    assert plain.item() == weighted.item() > 0  # only the KL term: unweighted


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_update_compares_the_sampler_with_untempered_log_probs(tiny_dir, temperature):
    """Engines report log-probs of the untempered distribution; `update` weighs against the
    trainer's own untempered log-probs at any temperature, so a sampler that agrees with the
    policy gets weights of exactly 1 and a perturbed one gets exp(-perturbation)."""
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    ids, mask = list(range(10, 30)), [0] * 12 + [1] * 8
    batch = pad_left([ids], [mask], 0)
    with torch.no_grad():
        untempered = token_logprobs(policy, batch, 1.0)
    for shift in (0.0, 0.3):
        sampler = torch.where(batch.loss_mask > 0, untempered + shift, torch.full_like(untempered, math.nan))
        b = pad_left([ids], [mask], 0, [[math.nan] * (len(ids) - batch.keep) + sampler[0].tolist()])
        s = Scored(b, torch.tensor([1.0]))
        stats = update(policy, torch.optim.SGD(policy.parameters(), lr=0.0), lambda loss: loss.backward(),
                       lambda n: torch.tensor(0.0), [s], clip_eps=0.2, kl_coef=0.0, ppo_epochs=1,
                       max_grad_norm=1.0, temperature=temperature, bf16=False, is_cap=2.0)
        assert stats.sampler.tokens == 8
        assert stats.sampler.abs_diff / 8 == pytest.approx(shift, abs=1e-5)
        torch.testing.assert_close(s.is_weight[b.loss_mask > 0], torch.full((8,), math.exp(-shift)), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- whole runs


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "rl_log.jsonl").read_text().splitlines()]


def word_run(tmp_path: Path, **kw) -> tuple[list, dict, RLOptions]:
    """The one-token-per-action world of tests/test_rl.py, one generated turn per rollout
    (so every turn is scored in the very context it was sampled in)."""
    build_word_model(tmp_path / "model")
    tasks, items = word_items(2)
    settings = dict(steps=3, items_per_step=2, group_size=4, lr=0.05, max_new_tokens=3, max_turns=2, save_every=0,
                    samples_per_step=0, micro_batch_size=4, cpu_threads=1)
    opts = options(**{**settings, **kw})
    return items, {t.id: t for t in tasks}, opts


def test_with_our_engine_the_sampler_is_the_trainer(tmp_path):
    items, by_id, opts = word_run(tmp_path)
    train_rl(tmp_path / "model", items, by_id, CodeTeacher(), TOOLS, tmp_path / "run", opts)
    log = records(tmp_path / "run")
    assert any(r["grad_norm"] > 0 for r in log)  # the weights moved between steps
    for r in log:
        assert r["sampler_logp_diff"] < 1e-5 and r["is_weight"] == pytest.approx(1.0, abs=1e-5)
        assert r["is_truncated"] == 0.0 and r["kl"] is None


@dataclass
class VLLMShapedModel:
    """What the model inside vLLM's worker offers here: `load_weights` of (name, tensor)
    pairs under Hugging Face names."""

    module: torch.nn.Module
    loads: int = 0

    def load_weights(self, weights) -> set[str]:
        params = dict(self.module.named_parameters())
        for name, tensor in weights:
            params[name].data.copy_(tensor)
        self.loads += 1
        return set(params)


@dataclass
class PolicyLLM:
    """vLLM's in-process `LLM`, in miniature: `generate` samples token by token from its OWN
    copy of the model (no cache), reports untempered log-probs (plus `shift`, a sampler that
    disagrees with the trainer), stops at stop strings or the end token; `apply_model` and
    `reset_prefix_cache` as vLLM's."""

    path: Path
    shift: float = 0.0
    resets: int = 0
    model: VLLMShapedModel = field(init=False)

    def __post_init__(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = VLLMShapedModel(AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32).eval())

    def apply_model(self, fn):
        return [fn(self.model)]

    def reset_prefix_cache(self) -> None:
        self.resets += 1

    @torch.no_grad()
    def generate(self, prompts, sampling_params, use_tqdm=True):
        return [self._one(p["prompt_token_ids"], sp) for p, sp in zip(prompts, sampling_params)]

    def _one(self, prompt: list[int], sp: FakeSamplingParams) -> SimpleNamespace:
        g = torch.Generator().manual_seed(sp.seed)
        tokens, logprobs, finish, reason, text = [], [], "length", None, ""
        while len(tokens) < sp.max_tokens:
            logits = self.model.module(torch.tensor([prompt + tokens])).logits[0, -1].float()
            tok = int(torch.multinomial(torch.softmax(logits / sp.temperature, -1), 1, generator=g))
            tokens.append(tok)
            logprobs.append({tok: SimpleNamespace(logprob=float(torch.log_softmax(logits, -1)[tok]) + self.shift)})
            if tok == self.tokenizer.eos_token_id:
                finish, reason = "stop", tok
                break
            text = self.tokenizer.decode(tokens)
            cut = stop_cut(text, sp.stop or ())
            if cut is not None:
                text, finish = text[:cut], "stop"
                reason = next(s for s in sp.stop if text.endswith(s))
                break
        done = SimpleNamespace(text=text, token_ids=tokens, logprobs=logprobs, finish_reason=finish, stop_reason=reason)
        return SimpleNamespace(outputs=[done], prompt_token_ids=prompt, num_cached_tokens=0)


def with_fake_vllm(monkeypatch, shift: float = 0.0) -> list[PolicyLLM]:
    """RL's vllm engine on the CPU, over `PolicyLLM`s (returned as they are built)."""
    built = []

    def build_llm(path, config):
        assert config.in_process  # RL needs vLLM's model in this process
        built.append(PolicyLLM(Path(path), shift))
        return built[-1], FakeSamplingParams

    monkeypatch.setattr("score_distill.models.vllm_engine.build_llm", build_llm)
    monkeypatch.setattr(rl_models, "require_cuda", lambda device: None)
    return built


def test_vllm_gets_the_weights_after_every_update(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    built = with_fake_vllm(monkeypatch)
    items, by_id, opts = word_run(tmp_path)
    final = train_rl(tmp_path / "model", items, by_id, CodeTeacher(), TOOLS, tmp_path / "run", opts, engine="vllm")
    [llm] = built
    assert llm.model.loads == llm.resets == opts.steps  # after each update, the prefix cache dropped
    trained = AutoModelForCausalLM.from_pretrained(final).state_dict()
    for name, value in llm.model.module.state_dict().items():
        assert torch.equal(value, trained[name]), name
    log = records(tmp_path / "run")
    assert any(r["grad_norm"] > 0 for r in log[:-1])  # the weights moved before the last rollouts
    # Every step's samples came from the weights the trainer held then: had vLLM kept the old
    # weights, the later steps' trainer and sampler log-probs would differ.
    for r in log:
        assert r["sampler_logp_diff"] < 1e-5 and r["is_weight"] == pytest.approx(1.0, abs=1e-5)
        assert r["token_mismatch"] is not None


@pytest.mark.parametrize("shift,weight,capped", [(0.5, math.exp(-0.5), 0.0), (-1.0, 2.0, 1.0)])
def test_a_sampler_that_disagrees_is_corrected_and_logged(tmp_path, monkeypatch, shift, weight, capped):
    """A sampler reporting every token `shift` more likely than the trainer finds it: the
    weights are exp(-shift), capped at is_cap (2), and the log says so."""
    with_fake_vllm(monkeypatch, shift)
    items, by_id, opts = word_run(tmp_path, steps=1)
    train_rl(tmp_path / "model", items, by_id, CodeTeacher(), TOOLS, tmp_path / "run", opts, engine="vllm")
    [r] = records(tmp_path / "run")
    assert r["sampler_logp_diff"] == pytest.approx(abs(shift), abs=1e-5)
    assert r["is_weight"] == pytest.approx(weight, abs=1e-5) and r["is_truncated"] == capped


def test_vllm_needs_a_gpu_and_one_process(tmp_path):
    with pytest.raises(UsageError, match="runs on a CUDA GPU; the device here is cpu"):
        rl_models.build_sampler("vllm", tmp_path, torch.device("cpu"), RLOptions())
    with pytest.raises(ValueError, match="engine 'vlm'"):
        rl_models.build_sampler("vlm", tmp_path, torch.device("cpu"), RLOptions())


def test_our_engine_syncs_only_the_module_it_samples_with(tiny_dir):
    from transformers import AutoModelForCausalLM

    from score_distill.models.base import GenRequest, SamplingParams
    from score_distill.models.local import LocalConfig, LocalModel

    engine = LocalModel(tiny_dir, LocalConfig(device="cpu", num_threads=1))
    engine.generate([GenRequest([{"role": "user", "content": "q"}], cache_key="t", seed=0)],
                    SamplingParams(temperature=1.0, max_new_tokens=2))
    assert len(engine.store) == 1
    with pytest.raises(ValueError, match="samples with the module being trained"):
        engine.sync_weights(AutoModelForCausalLM.from_pretrained(tiny_dir))
    engine.sync_weights(engine.model)
    assert len(engine.store) == 0  # no key/value of the old weights survives
