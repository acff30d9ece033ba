"""SFT (cold-start BC and SCoRe-SFT): the CPU loss path equals TRL's, training really
lowers the loss on the student's turns, and the saved checkpoint loads as a plain model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from score_distill.train.render import render_trajectory
from score_distill.train.sft import SFTOptions, _trainer_class, build_dataset, train_sft
from score_distill.types import Step

QUESTION = "What is six times seven?"
STEPS = [
    Step(kind="plan", thought="multiply the two numbers"),
    Step(kind="action", thought="compute", code="x = 6 * 7\nprint(x)", observation="42"),
    Step(kind="action", thought="answer", code="final_answer(x)", observation="42"),
]


def student_nll(model_dir: Path) -> float:
    """Mean negative log-likelihood of the student's tokens of the trajectory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids, mask = render_trajectory(tok, QUESTION, STEPS)
    labels = torch.tensor([t if m else -100 for t, m in zip(ids, mask)])
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), labels=labels[None]).loss.item()


def test_cpu_loss_equals_trls_fused_head_loss(tiny_dir, tmp_path):
    """The CPU path swaps TRL's fused LM head for the model's own cross-entropy; on the same
    micro-batch (padding and masked prompt included) both give the same loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    short = [STEPS[0], Step(kind="action", thought="answer", code="final_answer(42)", observation="42")]
    ds = build_dataset(tok, [(QUESTION, STEPS), ("Short one?", short)], max_length=512)
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[], use_cpu=True,
                     remove_unused_columns=False, activation_checkpointing=False)
    losses = []
    for cls in (SFTTrainer, _trainer_class(SFTTrainer, use_cpu=True, batch_size=2, seed=0)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
        trainer = cls(model=model, args=args, train_dataset=ds, processing_class=tok)
        batch = trainer.data_collator([ds[0], ds[1]])
        assert (batch["labels"] == -100).any() and batch["input_ids"].shape[0] == 2
        model.eval()
        with torch.no_grad():
            losses.append(trainer.compute_loss(model, dict(batch)).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_sft_lowers_the_loss_on_the_students_turns_and_saves_a_loadable_model(tiny_dir, tmp_path):
    before = student_nll(tiny_dir)
    final = train_sft(tiny_dir, [(QUESTION, STEPS)] * 8, tmp_path / "sft",
                      SFTOptions(epochs=6, lr=3e-3, batch_size=4, micro_batch_size=4, bf16=False, logging_steps=100))
    after = student_nll(final)
    assert (final / "config.json").is_file()
    assert after < before / 2, (before, after)
    # A second call finds the checkpoint and trains nothing.
    mtime = (final / "config.json").stat().st_mtime
    assert train_sft(tiny_dir, [(QUESTION, STEPS)], tmp_path / "sft", SFTOptions()) == final
    assert (final / "config.json").stat().st_mtime == mtime


def test_a_micro_batch_of_filler_rows_alone_trains_without_error(tiny_dir, tmp_path):
    """5 rows in batches of 4: 3 filler rows complete the last batch (pad_to_batches), each a
    micro-batch of its own here, with no label at all: their backward passes run on a loss
    of zero (a loss without a graph made the backward pass fail)."""
    from score_distill.train.sft import pad_to_batches

    opts = SFTOptions(epochs=1, lr=1e-3, batch_size=4, micro_batch_size=1, bf16=False, logging_steps=100)
    final = train_sft(tiny_dir, [(QUESTION, STEPS)] * 5, tmp_path / "sft", opts)
    assert (final / "config.json").is_file()
    from datasets import Dataset

    assert len(pad_to_batches(Dataset.from_dict({"input_ids": [[1, 2]] * 5, "labels": [[-100, 2]] * 5}), 4, 0)) == 8
    summary = json.loads((tmp_path / "sft" / "train_summary.json").read_text())
    assert (summary["rows"], summary["steps_this_call"]) == (5, 2)


def test_examples_without_trainable_tokens_are_refused(tiny_dir, tmp_path):
    broken = [Step(kind="plan", thought="", raw="garbage", parse_error="no tags")]
    with pytest.raises(ValueError, match="no trainable tokens"):
        train_sft(tiny_dir, [(QUESTION, broken)], tmp_path / "sft", SFTOptions())


def test_min_steps_adds_passes_over_a_small_data_set(tiny_dir, tmp_path):
    opts = SFTOptions(epochs=1, min_steps=3, batch_size=2, micro_batch_size=2, bf16=False, logging_steps=100,
                      checkpoint_every_s=0)  # a checkpoint at every epoch end
    train_sft(tiny_dir, [(QUESTION, STEPS)] * 2, tmp_path / "sft", opts)  # 1 step per epoch
    assert sorted(p.name for p in (tmp_path / "sft").glob("checkpoint-*")) == ["checkpoint-3"]
    # The call's throughput counts the steps it ran, each of 2 rows of the data's mean length.
    summary = json.loads((tmp_path / "sft" / "train_summary.json").read_text())
    assert (summary["rows"], summary["steps_this_call"], summary["device"]) == (2, 3, "cpu")
    assert summary["tokens_per_s"] == pytest.approx(3 * 2 * summary["mean_tokens"] / summary["seconds_this_call"], rel=0.1)  # seconds rounded


@pytest.mark.parametrize(("every_s", "expected"), [(1e-9, ["checkpoint-3"]), (3600.0, [])])
def test_checkpoints_follow_the_clock(tiny_dir, tmp_path, every_s, expected):
    # A due checkpoint is written at a step end (the last one kept), never at the final step;
    # a run shorter than the interval writes none besides its final weights.
    opts = SFTOptions(epochs=1, min_steps=4, batch_size=2, micro_batch_size=2, bf16=False, logging_steps=100,
                      checkpoint_every_s=every_s)
    final = train_sft(tiny_dir, [(QUESTION, STEPS)] * 2, tmp_path / "sft", opts)
    assert sorted(p.name for p in (tmp_path / "sft").glob("checkpoint-*")) == expected
    assert (final / "config.json").exists()


def test_a_checkpoint_left_half_written_is_not_resumed(tiny_dir, tmp_path):
    """A run killed while writing a checkpoint leaves a directory with some of its files and
    no mark; the same call again resumes from the last whole one and makes the model an
    uninterrupted run makes."""
    import shutil

    from safetensors.torch import load_file

    opts = SFTOptions(epochs=1, min_steps=4, batch_size=2, micro_batch_size=2, bf16=False, logging_steps=100,
                      checkpoint_every_s=1e-9)
    whole = train_sft(tiny_dir, [(QUESTION, STEPS)] * 2, tmp_path / "whole", opts)
    assert (tmp_path / "whole" / "checkpoint-3" / "complete.json").is_file()
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", killed / "checkpoint-2")  # stands for an older one
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", killed / "checkpoint-3")
    half = killed / "checkpoint-5"  # the weights half written, nothing after them
    half.mkdir()
    weights = (killed / "checkpoint-3" / "model.safetensors").read_bytes()
    (half / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    resumed = train_sft(tiny_dir, [(QUESTION, STEPS)] * 2, killed, opts)
    summary = json.loads((killed / "train_summary.json").read_text())
    assert (summary["resumed_from_step"], summary["steps_this_call"]) == (3, 1)
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_the_demos_memory_settings_train_the_same_model(tiny_dir, tmp_path):
    # One sequence per forward pass with recomputed activations (the demo's memory settings)
    # is the same optimisation as four at once: same batch of 4 by accumulation, same
    # token-count normalisation, same recomputed numbers.
    short = [STEPS[0], Step(kind="action", thought="answer", code="final_answer(42)", observation="42")]
    data = [(QUESTION, STEPS), ("Short one?", short)] * 2
    finals = []
    for name, micro, recompute in (("batched", 4, False), ("one-by-one", 1, True)):
        opts = SFTOptions(epochs=2, lr=3e-3, batch_size=4, micro_batch_size=micro, activation_checkpointing=recompute,
                          bf16=False, logging_steps=100)
        finals.append(train_sft(tiny_dir, data, tmp_path / name, opts))
    from transformers import AutoModelForCausalLM

    a, b = (AutoModelForCausalLM.from_pretrained(f).state_dict() for f in finals)
    moved = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    assert any(not torch.allclose(a[k], moved[k]) for k in a)  # it trained
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_chunked_loss_gives_the_one_shot_loss_and_gradients():
    # The CPU path scores trained positions in recomputed chunks (memory); the loss and the
    # gradients of the head and of the hidden states must be the one-shot ones.
    import torch.nn.functional as F

    from score_distill.train.sft import chunked_cross_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    grads = []
    for loss_of in (lambda: F.cross_entropy(head(hidden), targets, reduction="sum"),
                    lambda: chunked_cross_entropy(head, hidden, targets, chunk=8)):
        head.zero_grad()
        hidden.grad = None
        loss = loss_of()
        loss.backward()
        grads.append((loss.detach(), head.weight.grad.clone(), hidden.grad.clone()))
    for one_shot, chunked in zip(*grads):
        assert torch.allclose(one_shot, chunked, atol=1e-5)


def test_release_memory_gives_freed_heap_pages_back():
    # Blocks below glibc's mmap threshold stay in the heap after free(); the pipeline calls
    # release_memory() between stages so one stage's freed blocks do not add to the next
    # stage's peak.
    import gc

    from score_distill.memory import release_memory

    def resident_mb() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 >> 20

    blocks = [bytes(64 * 1024 - 100) for _ in range(4000)]  # 256 MB of heap blocks
    del blocks[::2]  # holes between live blocks: free() alone cannot give them back
    gc.collect()
    before = resident_mb()
    assert release_memory() is True
    assert resident_mb() < before - 60, (before, resident_mb())  # of the 128 MB of holes
    del blocks


def test_a_packed_row_scores_each_sequence_as_if_alone(tiny_dir, tmp_path):
    """Position ids restart and attention stops at each sequence's boundary: the CPU loss of
    one packed row equals the summed losses of its sequences run one by one, with the same
    labels as `render.py` gave them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from score_distill.train.packed_attention import register_packed_attention
    from score_distill.train.sft import pack_rows

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    short = [STEPS[0], Step(kind="action", thought="answer", code="final_answer(42)", observation="42")]
    ds = build_dataset(tok, [(QUESTION, STEPS), ("Short one?", short), ("Again?", STEPS[1:])], max_length=512)
    packed = pack_rows(ds, 2048)
    assert len(packed) == 1 and len(packed[0]["seq_lengths"]) == 3
    assert sorted(map(tuple, ds["labels"])) == sorted(  # the masks travel with their tokens, unchanged
        tuple(packed[0]["labels"][lo : lo + n]) for lo, n in
        zip([sum(packed[0]["seq_lengths"][:i]) for i in range(3)], packed[0]["seq_lengths"]))
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32,  # as train_sft loads it to pack
                                                 attn_implementation=register_packed_attention()).eval()
    cls = _trainer_class(SFTTrainer, use_cpu=True, batch_size=2, seed=0)
    n_items = sum(sum(t != -100 for t in row[1:]) for row in ds["labels"])
    losses = []
    for data, padding_free in ((packed, True), (ds, False)):
        args = SFTConfig(output_dir=str(tmp_path / str(padding_free)), per_device_train_batch_size=1, report_to=[],
                         use_cpu=True, remove_unused_columns=False, padding_free=padding_free, max_length=None,
                         activation_checkpointing=False)
        trainer = cls(model=model, args=args, train_dataset=data, processing_class=tok)
        with torch.no_grad():
            losses.append(sum(trainer.compute_loss(model, dict(trainer.data_collator([row])), num_items_in_batch=n_items)
                              .item() for row in data))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    # and the packed row really is one forward pass over every token
    assert trainer.data_collator([packed[0]])["input_ids"].shape[1] == sum(len(r) for r in ds["input_ids"])


def test_packing_trains_the_same_model_as_one_padded_batch(tiny_dir, tmp_path):
    # Four sequences in one packed row (one forward pass, no padding) against the same four
    # as one padded micro-batch: one optimiser step per epoch either way, same gradients.
    short = [STEPS[0], Step(kind="action", thought="answer", code="final_answer(42)", observation="42")]
    data = [(QUESTION, STEPS), ("Short one?", short)] * 2
    finals = []
    for name, packing, batch in (("padded", False, 4), ("packed", True, 1)):
        opts = SFTOptions(epochs=2, lr=3e-3, batch_size=batch, micro_batch_size=batch, packing=packing,
                          max_length=2048, bf16=False, logging_steps=100)
        finals.append(train_sft(tiny_dir, data, tmp_path / name, opts))
    from transformers import AutoModelForCausalLM

    a, b = (AutoModelForCausalLM.from_pretrained(f).state_dict() for f in finals)
    moved = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    assert any(not torch.allclose(a[k], moved[k]) for k in a)  # it trained
    for k in a:
        # Adam moves each weight by ~lr (3e-3) per step whatever its gradient's size, so the
        # rounding of near-zero gradients (summed in another order) shows: 1e-5 seen, 1% of a step.
        assert torch.allclose(a[k], b[k], atol=3e-5), (k, float((a[k] - b[k]).abs().max()))


def packed_and_reference_models(tiny_dir):
    """The tiny model twice: with PACKED_ATTENTION, and with transformers' own causal sdpa."""
    from transformers import AutoModelForCausalLM

    from score_distill.train.packed_attention import register_packed_attention

    name = register_packed_attention()
    return tuple(AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32, attn_implementation=impl).eval()
                 .get_decoder() for impl in (name, "sdpa"))


def test_packed_attention_equals_each_sequence_run_alone(tiny_dir):
    """Three sequences of different lengths in one row give the hidden states each gives
    alone (boundaries passed in, or found from the restarting position ids), and changing a
    token of the first changes nothing in the others."""
    from score_distill.train.packed_attention import sequence_bounds

    packed_model, reference = packed_and_reference_models(tiny_dir)
    assert packed_model.config._attn_implementation == "score_packed"  # GQA: 4 query heads, 2 key/value heads
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, packed_model.config.vocab_size, (n,), generator=gen) for n in (9, 23, 5)]
    row, positions = torch.cat(seqs)[None], torch.cat([torch.arange(len(s)) for s in seqs])[None]  # (1, 37)
    bounds = sequence_bounds(positions)
    assert bounds.tolist() == [0, 9, 32, 37]
    with torch.no_grad():
        alone = torch.cat([reference(input_ids=s[None]).last_hidden_state for s in seqs], dim=1)
        given = packed_model(input_ids=row, position_ids=positions, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds)
        found = packed_model(input_ids=row, position_ids=positions)
        changed = row.clone()
        changed[0, 4] = (changed[0, 4] + 1) % packed_model.config.vocab_size
        after = packed_model(input_ids=changed, position_ids=positions, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds)
        leaky = packed_model(input_ids=row).last_hidden_state  # plain causal: sequence 1 seen by 2 and 3
    for out in (given, found):
        assert torch.allclose(out.last_hidden_state, alone, atol=1e-5), (out.last_hidden_state - alone).abs().max()
    assert not torch.allclose(after.last_hidden_state[:, 4:9], given.last_hidden_state[:, 4:9], atol=1e-3)
    assert torch.allclose(after.last_hidden_state[:, 9:], given.last_hidden_state[:, 9:], atol=1e-6)
    assert not torch.allclose(leaky[:, 9:], alone[:, 9:], atol=1e-3)  # so the comparison above can fail


def test_packed_attention_builds_no_mask_and_refuses_padding(tiny_dir):
    # transformers' own mask step returns no mask for a packed row (sdpa would build the
    # (1, 1, T, T) block-diagonal one), and a padding mask is refused rather than dropped.
    from transformers.masking_utils import create_causal_mask

    packed_model, reference = packed_and_reference_models(tiny_dir)
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    embeds = torch.zeros(1, 7, packed_model.config.hidden_size)
    block = create_causal_mask(reference.config, embeds, None, None, position_ids=positions)
    assert block is not None and block.shape == (1, 1, 7, 7)  # what the default attention would build
    assert create_causal_mask(packed_model.config, embeds, None, None, position_ids=positions) is None
    padded = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    with pytest.raises(ValueError, match="does not mask padding"):
        packed_model(input_ids=torch.ones(1, 7, dtype=torch.long), attention_mask=padded)
