"""SCoRe-RL trainer: rollouts from the verified prefix, loss masks, the GRPO maths, KL,
checkpoints and resume, and a smoke run in which a tiny policy really learns. What RL does
with the ids and log-probs its engine sampled is in tests/test_rl_sampled_ids.py."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from score_distill.agent.format import render_step
from score_distill.models.scripted import ScriptedModel
from score_distill.teachers.base import TeacherUsage
from score_distill.tools.config import ToolConfig
from score_distill.tools.sandbox import SandboxConfig
from score_distill.train import rl
from score_distill.train.batches import pad_left
from score_distill.train.grpo import clipped_loss
from score_distill.train.logprobs import token_logprobs
from score_distill.train.rewards import KeyStepJudge, reward_summary
from score_distill.train.rl import RLOptions, rl_rollout_config, train_rl
from score_distill.train.rl_rollouts import Sample, collect, render_samples
from score_distill.train.rl_items import items_for_step, outcome_items, select_pool
from score_distill.types import KeyStepItem, Step, Task, Trajectory, read_jsonl, write_jsonl

TOOLS = ToolConfig(sandbox=SandboxConfig(timeout_s=5.0))


ROLLOUT_FIELDS = ("max_new_tokens", "max_turns", "temperature", "top_p", "max_format_errors", "max_repeats", "seed")


def options(**kw) -> RLOptions:
    """RLOptions with the rollout's fields given flat (`max_turns=3` is `rollout.max_turns`).
    fp32 unless a test asks for bf16: `bf16: auto` would pick bf16 on a CPU with AVX-512 BF16,
    where the reference (held in bf16) differs from the policy at the start by weight rounding
    and the KL checks below are no longer exact."""
    kw.setdefault("bf16", False)
    rollout = dataclasses.replace(rl_rollout_config(), **{k: kw.pop(k) for k in ROLLOUT_FIELDS if k in kw})
    return RLOptions(rollout=rollout, **kw)
PLAN = Step(kind="plan", thought="recall the secret, then add one")
SET_SECRET = Step(kind="action", thought="set it", code="secret = 41\nprint('set')", observation="set")


def act(code: str) -> str:
    return f"<thought>step</thought>\n<code>\n{code}\n</code>"


class CodeTeacher:
    """Equivalence = same code."""

    usage = TeacherUsage()

    def equivalent(self, task: Task, prefix: list[Step], a: Step, b: Step) -> bool:
        return a.code == b.code


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def secret_item() -> tuple[Task, KeyStepItem]:
    task = Task(id="s0", question="What is the secret plus one?", answer="42", suite="math")
    item = KeyStepItem(task_id="s0", question=task.question, answer="42", suite="math",
                       prefix=[PLAN, SET_SECRET], chosen=Step(kind="action", thought="t", code="print(secret)"),
                       rejected=Step(kind="action", thought="t", code="print(0)"))
    return task, item


def turn_index(messages: list[dict[str, str]]) -> int:
    return sum(m["role"] == "assistant" for m in messages)


# ---------------------------------------------------------------- item order and pool


def test_items_for_step_visits_every_item_once_per_epoch():
    n, per = 7, 3
    seen = [i for step in range(7) for i in items_for_step(n, step, per, seed=1)]  # 3 epochs
    for epoch in range(3):
        assert sorted(seen[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert seen[:n] != seen[n : 2 * n] or seen[n : 2 * n] != seen[2 * n :]  # epochs reshuffle
    assert items_for_step(n, 4, per, seed=1) == seen[12:15]  # a pure function of the step


def test_pool_keeps_every_intervention_and_a_share_of_the_rest():
    _, keyed = secret_item()
    plain = outcome_items([Task(id=f"p{i}", question="q", answer="1", suite="math") for i in range(10)])
    for share in (0.0, 0.3, 1.0):
        pool = select_pool([keyed] + plain, share, seed=0)
        assert keyed in pool
        assert sum(i.chosen is None for i in pool) == round(share * 10)
    assert select_pool(plain, 0.5, 0) == select_pool(plain, 0.5, 0)


def test_reward_summary_counts_levels_and_groups_with_signal():
    rewards = [1.0, 1.0, 0.1, 0.0, 0.5, 0.5]
    s = reward_summary(rewards, 2)
    assert s["reward"] == pytest.approx(sum(rewards) / 6)
    assert s["r1.0"] + s["r0.5"] + s["r0.1"] + s["r0"] == pytest.approx(1.0)
    assert s["signal"] == pytest.approx(1 / 3)
    # Rewards that went through a float32 tensor keep their levels.
    as_f32 = torch.tensor(rewards, dtype=torch.float32).tolist()
    assert as_f32[2] != 0.1
    s32 = reward_summary(as_f32, 2)
    assert (s32["r0.1"], s32["r1.0"], s32["signal"]) == (pytest.approx(1 / 6), pytest.approx(1 / 3), pytest.approx(1 / 3))


# ---------------------------------------------------------------- rollouts from the prefix


def test_rollouts_start_at_the_prefix_with_rebuilt_state(tokenizer):
    task, item = secret_item()
    seen_turns = []

    def policy(messages):
        seen_turns.append(turn_index(messages))
        return act("print(secret)") if turn_index(messages) == 2 else act("final_answer(secret + 1)")

    opts = options(group_size=2, max_turns=5)
    model = ScriptedModel(policy, tokenizer=tokenizer)
    samples = collect(model, [item], {task.id: task}, TOOLS, KeyStepJudge(CodeTeacher()), opts, 0)
    assert len(samples) == 2 and min(seen_turns) == 2  # the prefix turns were never generated
    for s in samples:
        assert s.start == 2 and s.traj.steps[:2] == item.prefix
        assert s.traj.steps[2].observation == "41"  # the prefix's variable lives in the new sandbox
        assert s.traj.final_answer == "42" and s.result.kind == "correct"
    # The loss mask covers exactly the generated turns (each with its end-of-turn token), on
    # the ids the model sampled (here, the tokenizer's own: no mismatch).
    [rendered] = render_samples(tokenizer, samples[:1], 4096)
    ids, mask = rendered.ids, rendered.mask
    assert (rendered.turns, rendered.mismatched) == (2, 0)
    assert samples[0].traj.steps[2].sampled_ids == tokenizer.encode(act("print(secret)"), add_special_tokens=False)
    assert item.prefix[0].sampled_ids is None
    runs, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    runs += [cur] if cur else []
    generated = samples[0].traj.steps[2:]
    assert [tokenizer.decode(r) for r in runs] == [render_step(s) + tokenizer.eos_token for s in generated]
    unmasked = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert "secret = 41" in unmasked and "Observation: 41" in unmasked


def test_without_short_horizon_rollouts_start_from_the_question():
    task, item = secret_item()
    script = {0: "<first_thought>go</first_thought>", 1: act("secret = 1"), 2: act("final_answer(secret)")}
    model = ScriptedModel(lambda messages: script[min(turn_index(messages), 2)])
    opts = options(group_size=2, max_turns=5, short_horizon=False)
    samples = collect(model, [item], {task.id: task}, TOOLS, KeyStepJudge(CodeTeacher()), opts, 0)
    for s in samples:
        assert s.start == 0 and s.traj.steps[0].thought == "go"
        # the key step (index 2 = len(prefix)) is judged: it is neither chosen nor rejected
        assert s.result.kind == "neither" and s.result.reward == 0.1


def test_group_advantages_are_set_per_item():
    task, item = secret_item()
    answers = iter(["42", "0", "42", "0"])
    model = ScriptedModel(lambda messages: act(f"final_answer({next(answers)})"))
    samples = collect(model, [item], {task.id: task}, TOOLS, KeyStepJudge(CodeTeacher()),
                      options(group_size=4, max_turns=5), 0)
    rewards = [s.result.reward for s in samples]
    assert sorted(rewards) == [0.1, 0.1, 1.0, 1.0]  # a wrong answer that is neither chosen nor rejected
    assert all((s.advantage > 0) == (s.result.reward == 1.0) for s in samples)
    assert sum(s.advantage for s in samples) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- GRPO maths


def tiny_policy(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


def test_left_padding_gives_the_unpadded_log_probs(tiny_dir, tokenizer):
    model = tiny_policy(tiny_dir)
    a = tokenizer("Observation: 7 final_answer(x)", add_special_tokens=False)["input_ids"]
    b = tokenizer("print(x)", add_special_tokens=False)["input_ids"]
    ma, mb = [0] * 3 + [1] * (len(a) - 3), [0] + [1] * (len(b) - 1)
    both = token_logprobs(model, pad_left([a, b], [ma, mb], pad_id=0))
    for row, (ids, m) in enumerate([(a, ma), (b, mb)]):
        alone = token_logprobs(model, pad_left([ids], [m], pad_id=0))
        n = alone.shape[1]
        torch.testing.assert_close(both[row, -n:], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bf16", [False, True])
def test_a_shared_prefix_scored_once_gives_each_rows_log_probs_and_gradient(tiny_dir, tokenizer, bf16, monkeypatch):
    """A group's samples continue one prompt: scoring the prompt once and the rows on top of
    its keys and values must give the log-probs and the gradient of scoring each row alone,
    prompt included (the prompt's weights get every row's share of the gradient)."""
    from score_distill.train import logprobs
    from score_distill.train.batches import micro_batches
    from score_distill.train.grpo import Scored, update

    model = tiny_policy(tiny_dir)
    prompt = tokenizer("Question: what is the secret plus one? Plan: recall it. " * 3,
                       add_special_tokens=False)["input_ids"]
    tails = ["print(secret)", "final_answer(42)\nObservation: done", "x = 1", "print(secret + 1) # two"]
    seqs, logps = [], []
    for k, tail in enumerate(tails):
        t = tokenizer(tail, add_special_tokens=False)["input_ids"]
        seqs.append((prompt + t, [0] * len(prompt) + [1] * len(t)))
        logps.append([math.nan] * len(prompt) + [-0.5] * len(t))
    advantages = [1.0, -0.5, 0.25, -0.75]

    def score(mbs):
        model.zero_grad()
        out = []
        for batch, adv in mbs:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logp = token_logprobs(model, batch)
            loss, _ = clipped_loss(logp, logp.detach(), adv, batch.loss_mask, 0.2)
            loss.backward()
            out += [row[m.bool()] for row, m in zip(logp.detach(), batch.loss_mask)]
        return out, [p.grad.clone() for p in model.parameters()]

    alone = micro_batches(seqs, advantages, 1, 0, logps)
    shared = micro_batches(seqs, advantages, 4, 0, logps, groups=[[0, 1, 2, 3]])
    assert len(shared) == 1 and shared[0][0].prefix.shape[1] == len(prompt) - 1
    assert all(b.prefix is None for b, _ in alone)
    (lp_alone, g_alone), (lp_shared, g_shared) = score(alone), score(shared)
    by_length = sorted(range(4), key=lambda i: len(seqs[i][0]))  # both orders: shortest first
    # fp32: the same sums in another order; bf16: each pass rounds its own activations.
    tol = 2e-2 if bf16 else 1e-5
    for i in range(4):
        torch.testing.assert_close(lp_shared[i], lp_alone[i], atol=tol, rtol=tol)
        assert len(lp_shared[i]) == len(seqs[by_length[i]][0]) - len(prompt)
    for mine, want in zip(g_shared, g_alone):
        assert float(want.norm()) > 0
        assert float((mine - want).norm() / want.norm()) < 5 * tol

    # The update runs the prefix once for a group's micro-batches of one row each, and sends
    # their gradient through it at the end of the pass: the same gradient again.
    class Still:  # an optimiser that leaves the weights (and the gradients) where they are
        def zero_grad(self, set_to_none=True):
            model.zero_grad(set_to_none=set_to_none)

        def step(self):
            pass

    prefix_passes = []
    real = logprobs.prefix_kv
    monkeypatch.setattr(logprobs, "prefix_kv", lambda *a: prefix_passes.append(1) or real(*a))
    for layout in (alone, micro_batches(seqs, advantages, 1, 0, logps, groups=[[0, 1, 2, 3]])):
        update(model, Still(), lambda loss: loss.backward(), lambda n: torch.tensor(0.0),
               [Scored(b, a) for b, a in layout], clip_eps=0.2, kl_coef=0.0, ppo_epochs=1, max_grad_norm=1.0,
               temperature=1.0, bf16=bf16, is_cap=0.0)
        grads = [p.grad.clone() for p in model.parameters()]
        if layout is alone:
            plain = grads
    assert len(prefix_passes) == 1  # one prefix pass for the group's four micro-batches
    for mine, want in zip(grads, plain):
        assert float((mine - want).norm() / want.norm()) < 5 * tol


def test_loss_is_the_policy_gradient_on_generated_tokens_only(tiny_dir, tokenizer):
    """Independent check: the gradient of the loss equals the gradient of -advantage times the
    log-probs of the tokens the renderer masks in (the generated turns), gathered by hand from
    a plain unpadded forward pass."""
    model = tiny_policy(tiny_dir)
    task, item = secret_item()
    steps = item.prefix + [Step(kind="action", thought="s", code="print(secret)", observation="41"),
                           Step(kind="action", thought="f", code="final_answer(42)", observation="")]
    traj = Trajectory(task_id="s0", steps=steps, final_answer="42", finished=True)
    sample = Sample(item, task.question, traj, 2, None, 0.7)  # type: ignore[arg-type]
    [rendered] = render_samples(tokenizer, [sample], 4096)  # no sampled ids: the re-tokenised text
    ids, mask = rendered.ids, rendered.mask
    batch = pad_left([ids], [mask], pad_id=0)
    logp = token_logprobs(model, batch)
    loss, stats = clipped_loss(logp, logp.detach(), torch.tensor([0.7]), batch.loss_mask, 0.2)
    loss.backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    full = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1], -1)
    by_hand = full.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    (-0.7 * sum(by_hand[t - 1] for t in range(1, len(ids)) if mask[t])).backward()
    for mine, want in zip(ours, (p.grad for p in model.parameters())):
        torch.testing.assert_close(mine, want, atol=1e-5, rtol=1e-4)
    assert loss.item() == pytest.approx(-0.7 * sum(mask))  # ratio 1 on the first pass
    assert stats.tokens == sum(mask) < len(ids)


def test_update_takes_the_old_log_probs_and_kl_from_its_first_pass(tiny_dir, tokenizer):
    """The reference is only scored (the policy's log-probs come from `update`'s first pass,
    before any weight moved); the KL that `update` logs equals the k3 KL of a separate
    measurement, and a second pass compares against the pre-update log-probs (so its ratio
    moves away from 1)."""
    from score_distill.train.batches import micro_batches
    from score_distill.train.grpo import kl_k3, reference_logprobs, update

    policy, ref = tiny_policy(tiny_dir), tiny_policy(tiny_dir)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))  # policy != reference, so the KL is not zero
    seqs = []
    for text in ("print(secret) final_answer(42)", "x = 1 + 2 print(x)"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        seqs.append((ids, [0, 0] + [1] * (len(ids) - 2)))
    mbs = micro_batches(seqs, [1.0, -1.0], 1, 0)
    cpu = torch.device("cpu")
    scored = reference_logprobs(ref, mbs, cpu, 1.0, False)
    assert all(s.old_logp is None and s.ref_logp is not None for s in scored)
    with torch.no_grad():
        before = [token_logprobs(policy, s.batch) for s in scored]
    kl_by_hand = sum(float((kl_k3(b, s.ref_logp) * s.batch.loss_mask).sum()) for b, s in zip(before, scored))
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    stats = update(policy, opt, lambda loss: loss.backward(), lambda n: torch.nn.utils.clip_grad_norm_(
        policy.parameters(), n), scored, clip_eps=0.2, kl_coef=0.0, ppo_epochs=2, max_grad_norm=1.0,
        temperature=1.0, bf16=False)
    assert kl_by_hand > 0 and stats.kl == pytest.approx(kl_by_hand, rel=1e-5)
    assert stats.kl_tokens == sum(float(s.batch.loss_mask.sum()) for s in scored)
    for b, s in zip(before, scored):
        torch.testing.assert_close(s.old_logp, b, atol=1e-5, rtol=1e-5)
    assert stats.passes == 2 and stats.clipped > 0  # lr 1.0 moves the ratio out of the clip range


def test_a_non_finite_gradient_stops_the_update_before_any_weight_moves(tiny_dir, tokenizer):
    """A NaN loss once went through the optimiser and made every weight NaN (later rewards
    all 0, training silently dead). `update` now raises before stepping."""
    from score_distill.train.diverged import NonFiniteUpdate
    from score_distill.train.batches import micro_batches
    from score_distill.train.grpo import reference_logprobs, update

    policy = tiny_policy(tiny_dir)
    ids = tokenizer("print(secret) final_answer(42)", add_special_tokens=False)["input_ids"]
    mbs = micro_batches([(ids, [0, 0] + [1] * (len(ids) - 2))], [float("nan")], 1, 0)
    scored = reference_logprobs(tiny_policy(tiny_dir), mbs, torch.device("cpu"), 1.0, False)
    before = [p.detach().clone() for p in policy.parameters()]
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    with pytest.raises(NonFiniteUpdate, match="gradient norm is nan"):
        update(policy, opt, lambda loss: loss.backward(), lambda n: torch.nn.utils.clip_grad_norm_(
            policy.parameters(), n), scored, clip_eps=0.2, kl_coef=0.0, ppo_epochs=1, max_grad_norm=1.0,
            temperature=1.0, bf16=False)
    for b, p in zip(before, policy.parameters()):
        assert torch.equal(b, p.detach())


def test_clip_stops_the_gradient_only_past_the_trust_region():
    old = torch.zeros(1, 1)
    for adv, moved, zero in [(1.0, 0.5, True), (-1.0, 0.5, False), (1.0, -0.5, False), (-1.0, -0.5, True)]:
        logp = torch.full((1, 1), moved, requires_grad=True)  # ratio e^0.5 > 1.2 or e^-0.5 < 0.8
        loss, stats = clipped_loss(logp, old, torch.tensor([adv]), torch.ones(1, 1), 0.2)
        loss.backward()
        assert (logp.grad.abs().item() == 0) == zero, (adv, moved)
        assert stats.clipped == 1.0


# ---------------------------------------------------------------- the trainer end to end


def plain_world(n: int) -> tuple[list[Task], dict[str, Task]]:
    tasks = [Task(id=f"m{i}", question=f"What is {i} + 1?", answer=str(i + 1), suite="math") for i in range(n)]
    return tasks, {t.id: t for t in tasks}


SMOKE = options(steps=3, items_per_step=2, group_size=2, max_new_tokens=6, max_turns=2, save_every=1,
                  outcome_only_share=1.0, use_key_step=False, micro_batch_size=2, cpu_threads=1)


def test_smoke_run_without_a_reference_saves_a_loadable_model(tiny_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from score_distill.models.local import LocalModel

    cleared = []
    real_clear = LocalModel.clear_cache
    monkeypatch.setattr(LocalModel, "clear_cache", lambda self: cleared.append(self) or real_clear(self))
    tasks, by_id = plain_world(3)
    final = train_rl(tiny_dir, outcome_items(tasks), by_id, None, TOOLS, tmp_path, SMOKE)
    assert len(cleared) == SMOKE.steps  # after every update, no stale keys/values survive
    records = [json.loads(line) for line in (tmp_path / "rl_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["kl"] is None for r in records)  # kl_coef 0: no reference, no KL
    assert all(r["gen_tokens"] > 0 and r["gen_tok_s"] > 0 for r in records)
    assert AutoModelForCausalLM.from_pretrained(final).config.vocab_size > 0
    assert not (tmp_path / "checkpoints").exists()
    samples = read_jsonl(tmp_path / "samples.jsonl", Trajectory)
    assert samples and all("reward" in s.meta for s in samples)


@pytest.mark.parametrize("keep", [False, True])
def test_the_reference_is_freed_before_the_update_unless_kept(tiny_dir, tmp_path, monkeypatch, keep):
    import gc
    import weakref

    from score_distill.train import grpo

    loads, alive_at_update = [], []
    real_load, real_update = rl.Reference._load, grpo.update

    def load(self):
        model = real_load(self)
        loads.append(weakref.ref(model))
        return model

    def update(*args, **kwargs):
        gc.collect()
        alive_at_update.append(sum(r() is not None for r in loads))
        return real_update(*args, **kwargs)

    monkeypatch.setattr(rl.Reference, "_load", load)
    monkeypatch.setattr(grpo, "update", update)
    tasks, by_id = plain_world(3)
    train_rl(tiny_dir, outcome_items(tasks), by_id, None, TOOLS, tmp_path,
             dataclasses.replace(SMOKE, keep_reference=keep, save_every=0, kl_coef=0.01))
    assert len(alive_at_update) == SMOKE.steps
    if keep:  # loaded once, held throughout
        assert len(loads) == 1 and alive_at_update == [1] * SMOKE.steps
    else:  # read for each step's scoring, gone by its update
        assert len(loads) == SMOKE.steps and alive_at_update == [0] * SMOKE.steps
    records = [json.loads(line) for line in (tmp_path / "rl_log.jsonl").read_text().splitlines()]
    assert records[0]["kl"] == 0.0  # the reference read from disk is the starting checkpoint


def test_rerun_resumes_from_the_checkpoint_and_trims_the_log(tiny_dir, tmp_path, monkeypatch):
    tasks, by_id = plain_world(3)
    real_step = rl._Trainer.step

    def dies_at_third(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(rl._Trainer, "step", dies_at_third)
    with pytest.raises(KeyboardInterrupt):
        train_rl(tiny_dir, outcome_items(tasks), by_id, None, TOOLS, tmp_path, SMOKE)
    assert (tmp_path / "checkpoints" / "step-000002" / "state.json").is_file()
    with (tmp_path / "rl_log.jsonl").open("a") as f:
        f.write('{"step": 3, "torn"')  # a record the killed run half wrote
    stale = Trajectory(task_id="m0", meta={"rl_step": 3})  # as if written after the checkpoint
    write_jsonl(tmp_path / "samples.jsonl", [stale], append=True)
    monkeypatch.setattr(rl._Trainer, "step", real_step)
    started = []
    monkeypatch.setattr(rl, "items_for_step", lambda *a: started.append(a[1]) or items_for_step(*a))
    final = train_rl(tiny_dir, outcome_items(tasks), by_id, None, TOOLS, tmp_path, SMOKE)
    assert started == [2]
    records = [json.loads(line) for line in (tmp_path / "rl_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    steps = [t.meta["rl_step"] for t in read_jsonl(tmp_path / "samples.jsonl", Trajectory)]
    assert steps == sorted(steps) and set(steps) == {1, 2, 3} and len(steps) == 3 * SMOKE.samples_per_step
    assert train_rl(tiny_dir, outcome_items(tasks), by_id, None, TOOLS, tmp_path, SMOKE) == final
    assert started == [2]  # the third call found `final` and did nothing


def test_inputs_that_cannot_train_are_refused(tiny_dir, tmp_path):
    task, item = secret_item()
    opts = options(max_turns=5)
    with pytest.raises(ValueError, match="need a teacher"):
        train_rl(tiny_dir, [item], {task.id: task}, None, TOOLS, tmp_path, opts)
    with pytest.raises(KeyError, match="unknown tasks"):
        train_rl(tiny_dir, [item], {}, CodeTeacher(), TOOLS, tmp_path, opts)
    with pytest.raises(ValueError, match="pool is empty"):  # the prefix fills the turn budget
        train_rl(tiny_dir, [item], {task.id: task}, CodeTeacher(), TOOLS, tmp_path, options(max_turns=2))
    with pytest.raises(ValueError, match="pool is empty"):
        train_rl(tiny_dir, outcome_items([task]), {task.id: task}, None, TOOLS, tmp_path,
                 options(outcome_only_share=0.0))


# ---------------------------------------------------------------- it learns

ANSWERS = range(1, 9)
GOOD = 7


def action_text(v: int) -> str:
    return act(f"final_answer({v})").replace("step", "t")


def build_word_model(out: Path) -> None:
    """A 1-layer Llama over a word-level vocabulary in which each candidate action is ONE
    token: sampling a well-formed step is likely from the start, and the correct one is one
    choice among eight, so the reward has room to rise."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from score_distill.models.builtin import CHATML_TEMPLATE

    vocab = {"<unk>": 0, "<|endoftext|>": 1, "<|im_start|>": 2, "<|im_end|>": 3}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<unk>")
    tok.add_tokens([action_text(v) for v in ANSWERS])
    tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(out)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
                         bos_token_id=2, eos_token_id=3, pad_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 3, 1
    model.save_pretrained(out)


def word_items(n: int) -> tuple[list[Task], list[KeyStepItem]]:
    """Items whose key step is an answer: the fix answers GOOD, the mistake answered 3."""
    tasks = [Task(id=f"w{i}", question=f"Question {i}", answer=str(GOOD), suite="math") for i in range(n)]
    items = [KeyStepItem(task_id=t.id, question=t.question, answer=t.answer, suite="math",
                         prefix=[Step(kind="plan", thought="answer")],
                         chosen=Step(kind="action", thought="t", code=f"final_answer({GOOD})"),
                         rejected=Step(kind="action", thought="t", code="final_answer(3)")) for t in tasks]
    return tasks, items


@pytest.mark.slow
def test_grpo_with_key_step_reward_learns_the_right_step(tmp_path):
    build_word_model(tmp_path / "model")
    tasks, items = word_items(4)
    opts = options(steps=12, items_per_step=2, group_size=4, lr=0.02, max_new_tokens=3, max_turns=3,
                     save_every=0, samples_per_step=0, micro_batch_size=16, cpu_threads=1)
    train_rl(tmp_path / "model", items, {t.id: t for t in tasks}, CodeTeacher(), TOOLS, tmp_path / "run", opts)
    records = [json.loads(line) for line in (tmp_path / "run" / "rl_log.jsonl").read_text().splitlines()]
    first = sum(r["reward"] for r in records[:3]) / 3
    last = sum(r["reward"] for r in records[-3:]) / 3
    assert last > first + 0.25 and last > 0.6, (first, last)


def test_several_passes_clip_and_the_kl_penalty_runs_in_bf16(tmp_path):
    """ppo_epochs > 1 moves the ratio away from 1, so the clip engages after the first pass;
    with a KL penalty every sequence is trained and the KL leaves 0 after the first update."""
    build_word_model(tmp_path / "model")
    tasks, items = word_items(2)
    opts = options(steps=2, items_per_step=2, group_size=4, lr=0.05, ppo_epochs=3, kl_coef=0.1, bf16=True,
                     max_new_tokens=3, max_turns=3, save_every=0, samples_per_step=0, micro_batch_size=3,
                     cpu_threads=1)
    train_rl(tmp_path / "model", items, {t.id: t for t in tasks}, CodeTeacher(), TOOLS, tmp_path / "run", opts)
    records = [json.loads(line) for line in (tmp_path / "run" / "rl_log.jsonl").read_text().splitlines()]
    # In bf16 the reference is held in bf16: at the start it differs from the policy by the
    # rounding of its weights only.
    assert abs(records[0]["kl"]) < 1e-5 and records[1]["kl"] > 1e-4
    assert records[0]["clip_frac"] > 0.0
    assert all(r["trained_seqs"] == 8 and math.isfinite(r["loss"]) for r in records)


def test_without_a_kl_penalty_no_reference_is_ever_loaded(tiny_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    loaded = []
    real = AutoModelForCausalLM.from_pretrained.__func__
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        classmethod(lambda cls, *a, **kw: loaded.append(a[0]) or real(cls, *a, **kw)))
    monkeypatch.setattr(rl.Reference, "__init__", lambda *a: pytest.fail("a reference was built"))
    tasks, by_id = plain_world(3)
    train_rl(tiny_dir, outcome_items(tasks), by_id, None, TOOLS, tmp_path, dataclasses.replace(SMOKE, save_every=0))
    assert len(loaded) == 1  # the policy (the engine's own module), once
    records = [json.loads(line) for line in (tmp_path / "rl_log.jsonl").read_text().splitlines()]
    assert [r["kl"] for r in records] == [None] * SMOKE.steps


def test_activation_checkpointing_and_shared_prefixes_change_no_number(tmp_path, monkeypatch):
    # Compute options only: the same steps with each give the same log and weights as the plain
    # passes; with checkpointing the layers really run under torch's checkpoint, and with shared
    # prefixes the update really scores a prefix once per micro-batch.
    from score_distill.train import batches

    import transformers.modeling_utils as modeling_utils
    from transformers import AutoModelForCausalLM

    calls = []
    real = modeling_utils.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "checkpoint", counting)
    prefixes = []
    real_pad = batches.pad_left_shared
    monkeypatch.setattr(batches, "pad_left_shared",
                        lambda *a, **kw: (lambda b: prefixes.append(b.prefix) or b)(real_pad(*a, **kw)))
    build_word_model(tmp_path / "model")
    tasks, items = word_items(2)
    logs, weights = [], []
    for checkpointing, share in ((False, False), (True, True), (False, True)):
        calls.clear()
        prefixes.clear()
        # is_cap 0: the sampler's log-probs, which move by float rounding with the batch the
        # rollout happened to form (rows join as their tool calls return), stay out of the loss.
        opts = options(steps=3, items_per_step=2, group_size=4, lr=0.02, max_new_tokens=3, max_turns=3,
                         save_every=0, samples_per_step=0, micro_batch_size=2, cpu_threads=1,
                         activation_checkpointing=checkpointing, share_prefix=share, is_cap=0.0)
        run = tmp_path / f"run-{checkpointing}-{share}"
        out = train_rl(tmp_path / "model", items, {t.id: t for t in tasks}, CodeTeacher(), TOOLS, run, opts)
        logs.append([json.loads(line) for line in (run / "rl_log.jsonl").read_text().splitlines()])
        weights.append(AutoModelForCausalLM.from_pretrained(out).state_dict())
        assert bool(calls) is checkpointing
        # checkpointing keeps no keys/values, so it scores every row whole
        assert any(p is not None for p in prefixes) is (share and not checkpointing)
    plain = logs[0]
    start = AutoModelForCausalLM.from_pretrained(tmp_path / "model").state_dict()
    assert any(r["grad_norm"] > 0 for r in plain)  # the weights did move
    for other in logs[1:]:
        assert [r["reward"] for r in plain] == [r["reward"] for r in other]
        assert [r["loss"] for r in plain] == pytest.approx([r["loss"] for r in other], rel=1e-5, abs=1e-7)
    recomputed, shared = weights[1], weights[2]
    for name, value in weights[0].items():
        assert torch.allclose(value, recomputed[name], atol=1e-6), name  # the same sums, recomputed
        # Shared prefixes sum in another order, which moves Adam's per-weight steps a little:
        # the runs may differ by a thousandth of how far the weights moved, not more.
        moved_by = float((value - start[name]).norm())
        assert float((shared[name] - value).norm()) <= 1e-3 * moved_by + 1e-6, name


@pytest.mark.parametrize("dtype,temperature", [(torch.float32, 1.0), (torch.float32, 0.7), (torch.bfloat16, 1.0)])
def test_chunked_target_logprobs_equal_the_plain_ones_with_their_gradients(dtype, temperature, monkeypatch):
    # token_logprobs computes the softmax a few positions at a time (memory); values and
    # gradients must be those of the plain float32 log_softmax + gather.
    from score_distill.train import logprobs

    monkeypatch.setattr(logprobs, "LOGPROB_CHUNK", 3)
    torch.manual_seed(0)
    base = torch.randn(2, 7, 11).to(dtype)
    targets = torch.randint(0, 11, (2, 7))
    weights = torch.randn(2, 7)
    results = []
    for chunked in (False, True):
        logits = base.clone().requires_grad_(True)
        if chunked:
            logp = logprobs._TargetLogprobs.apply(logits, targets, temperature)
        else:
            logp = torch.log_softmax(logits.float() / temperature, -1).gather(-1, targets[..., None]).squeeze(-1)
        (logp * weights).sum().backward()
        results.append((logp.detach(), logits.grad.float()))
    (plain, plain_grad), (chunked, chunked_grad) = results
    assert chunked.dtype == torch.float32 and torch.allclose(plain, chunked, atol=1e-5)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert torch.allclose(plain_grad, chunked_grad, atol=tol), (plain_grad - chunked_grad).abs().max()
