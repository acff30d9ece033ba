"""Supervised fine-tuning on CodeAct trajectories (cold-start BC and SCoRe-SFT).

Trajectories are tokenised by `train.render.render_trajectory`, the single place that
decides loss masks; the resulting `input_ids` + `labels` (-100 off the student's turns) go
to TRL's `SFTTrainer`, which then trains on exactly those labels. With `packing`, whole
sequences share rows and each attends to itself alone (`train.packed_attention`). The
checkpoint written to `<out>/final` is a plain transformers model directory (plus tokenizer).

    from score_distill.train.sft import SFTOptions, train_sft
    train_sft("path/to/student", [(question, steps), ...], "runs/x/bc", SFTOptions(epochs=2))
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from score_distill.config import UsageError, option
from score_distill.devices import training_device
from score_distill.precision import Bf16, resolve_bf16
from score_distill.storage import atomic_dir, atomic_write_json
from score_distill.train.render import render_trajectory
from score_distill.train.sft_checkpoints import (checkpoint_step, checkpoint_timer, complete_checkpoints,
                                                 resumable_checkpoint)
from score_distill.types import Step

log = logging.getLogger(__name__)


@dataclass
class SFTOptions:
    epochs: float = option(2.0, "passes over the data")
    min_steps: int = option(0, "at least this many optimiser steps, with more passes over a small data set "
                               "(a 13-trajectory BC set at 2 epochs is 7 steps: too few to learn the format)")
    lr: float = option(1e-4, "peak learning rate (cosine decay, 5% warm-up)")
    batch_size: int = option(8, "sequences per optimiser step (per_device * grad accumulation)")
    micro_batch_size: int = option(4, "sequences per forward pass")
    max_length: int = option(1536, "longer sequences are truncated (keep start)")
    bf16: Bf16 = option("auto", "bf16 autocast; auto: where the hardware computes bf16 natively (GPUs, CPUs "
                                "with AVX-512 BF16 or AMX; elsewhere fp32 is faster: precision.py)")
    packing: bool = option(False, "pack sequences into rows of up to max_length tokens (best-fit decreasing), "
                                  "position ids restarting per sequence and no attention across them: no "
                                  "padding. batch_size and micro_batch_size then count packed rows")
    lora_r: int = option(0, "LoRA rank; 0 = full fine-tuning")
    activation_checkpointing: bool = option(False, "recompute activations in the backward pass: less memory for "
                                                   "long sequences, for more compute")
    checkpoint_every_s: float = option(300.0, "write a resumable checkpoint (weights and optimizer) when this "
                                              "many seconds have passed since the last; 0 = at every epoch end. "
                                              "A short run on a small data set otherwise spends its time "
                                              "writing optimizer states")
    seed: int = option(0, "seed of shuffling and dropout")
    logging_steps: int = option(5, "log every N optimiser steps")


def build_dataset(tokenizer, examples: list[tuple[str, list[Step]]], max_length: int,
                  train_on: Callable[[int, Step], bool] | None = None):
    """A `datasets.Dataset` of input_ids/labels from (question, steps) pairs."""
    from datasets import Dataset

    rows = {"input_ids": [], "labels": []}

    def trained(i: int, s: Step) -> bool:
        # A step that did not parse (a student's malformed turn kept in a solved MPS
        # trajectory) stays in the context but is never a target.
        return s.parse_error is None and (train_on is None or train_on(i, s))

    for question, steps in examples:
        ids, mask = render_trajectory(tokenizer, question, steps, train_on=trained)
        ids, mask = ids[:max_length], mask[:max_length]
        if not any(mask):
            continue
        rows["input_ids"].append(ids)
        rows["labels"].append([t if m else -100 for t, m in zip(ids, mask)])
    return Dataset.from_dict(rows)


def pack_rows(dataset, max_length: int):
    """Rows of whole sequences, each row at most `max_length` tokens, by best-fit decreasing
    (TRL's `pack_dataset`), with a `seq_lengths` column giving each row's sequences. The
    labels travel with their tokens, so every sequence keeps the loss mask `render.py` gave
    it; only the first token of each sequence loses its label in the collator, which a
    rendered trajectory never trains (it is the chat template's first token).

    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5], [6]], "labels": [[-100, 2, 3], [-100, 5], [-100]]})
    >>> packed = pack_rows(ds, 4)
    >>> packed["input_ids"][:], packed["seq_lengths"][:]
    ([[1, 2, 3, 6], [4, 5]], [[3, 1], [2]])
    """
    from trl.data_utils import pack_dataset

    return pack_dataset(dataset, max_length, strategy="bfd")


LOSS_CHUNK = 256  # trained positions scored at once on the CPU path


def chunked_cross_entropy(head, hidden, targets, chunk: int = LOSS_CHUNK):
    """Summed cross-entropy of `head(hidden)` (N, V) against `targets` (N,), computed `chunk`
    rows at a time, each chunk's logits recomputed in the backward pass instead of kept.
    Equal to the one-shot sum up to float rounding.

    >>> import torch
    >>> head, h, t = torch.nn.Linear(4, 7, bias=False), torch.randn(10, 4), torch.randint(0, 7, (10,))
    >>> full = torch.nn.functional.cross_entropy(head(h), t, reduction="sum")
    >>> bool(torch.allclose(chunked_cross_entropy(head, h, t, chunk=3), full))
    True
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    def part(h, t):
        return F.cross_entropy(head(h).float(), t, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, len(targets), chunk):
        total = total + checkpoint(part, hidden[i : i + chunk], targets[i : i + chunk], use_reentrant=False)
    return total


def pad_to_batches(dataset, batch_size: int, pad_id: int):
    """`dataset` with rows that weigh nothing (two pad tokens, no label) added until its
    length is a multiple of `batch_size`, the global batch. The last optimiser step then has
    as many rows as the others, split evenly between the processes; without them the data
    loader of a multi-process run repeats rows from the start to fill the last batch (rows
    trained twice, and a different update from a one-process run). A packed set gets
    one-sequence rows.

    >>> from datasets import Dataset
    >>> ds = pad_to_batches(Dataset.from_dict({"input_ids": [[5, 6, 7]], "labels": [[-100, 6, 7]]}), 3, pad_id=0)
    >>> ds["input_ids"][:], ds["labels"][:]
    ([[5, 6, 7], [0, 0], [0, 0]], [[-100, 6, 7], [-100, -100], [-100, -100]])
    """
    missing = -len(dataset) % batch_size
    if not missing:
        return dataset
    filler = {"input_ids": [pad_id, pad_id], "labels": [-100, -100]}
    if "seq_lengths" in dataset.column_names:
        filler["seq_lengths"] = [2]
    rows = dataset.to_dict()
    return type(dataset).from_dict({name: rows[name] + [filler[name]] * missing for name in rows})


def length_grouped_sampler(lengths: list[int], batch_size: int, seed: int):  # noqa: ANN201 (a torch Sampler)
    """Transformers' length-grouped order (random megabatches of 50 global batches, each
    sorted by length) with `batch_size` the GLOBAL batch and a generator seeded from (seed,
    epoch): the same order for any number of processes, each of which takes every P-th
    micro-batch of it, so the rows of an optimiser step are the same whatever P. A resumed
    run draws the same order again (the trainer sets the epoch)."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class GlobalLengthSampler(LengthGroupedSampler):
        def set_epoch(self, epoch: int) -> None:
            self.generator = torch.Generator().manual_seed(seed * 100_003 + epoch)

    sampler = GlobalLengthSampler(batch_size, lengths=lengths)
    sampler.set_epoch(0)
    return sampler


def _trainer_class(sft_trainer, use_cpu: bool, batch_size: int, seed: int):
    """SFTTrainer with the sampler of `length_grouped_sampler`, checkpoints decided by the
    main process for all of them, and, on CPU, the cross-entropy computed at the trained
    positions only.

    TRL computes the loss through its fused LM head. Without Triton (CPU) that head scores
    every position, masked ones included, tile by tile in eager torch ops, and recomputes the
    tiles in the backward pass; with SmolLM2's 49k vocabulary this halved training speed here
    (bench/sft_throughput.txt). The model's own loss is faster but still projects every
    position onto the vocabulary and takes a log-softmax over all of them: on a 4 x 960
    batch half masked, that is 11% of a training step in the log-softmax alone. So the LM
    head runs on the hidden states of the trained positions only (the prompt and the
    observations are not scored at all). Same labels, same shift, same token-count
    normalisation across gradient accumulation (`num_items_in_batch`); TRL's entropy and
    token-accuracy metrics are not logged on that path. The trained positions are scored
    in chunks of `LOSS_CHUNK` whose logits are recomputed in the backward pass: the (N, V)
    logits of a long sequence, in fp32 with their gradient, would otherwise be the largest
    tensors of the step (1,500 positions x 49k: 0.3 GB a copy).
    """
    from score_distill.train.packed_attention import sequence_bounds

    class GlobalBatchSFTTrainer(sft_trainer):
        def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001, ANN202
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return length_grouped_sampler([len(ids) for ids in dataset["input_ids"]], batch_size, seed)

    if not use_cpu:
        return GlobalBatchSFTTrainer

    class CPUSFTTrainer(GlobalBatchSFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels, mask, positions = inputs["labels"], inputs.get("attention_mask"), inputs.get("position_ids")
            # A packed batch (TRL's padding-free collator: one row, position ids restarting at
            # each sequence, no mask) carries its boundaries to the attention, found once here
            # rather than in every layer; the model was loaded with PACKED_ATTENTION (train_sft).
            bounds = sequence_bounds(positions) if positions is not None and mask is None else None
            packed = {} if bounds is None else {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds}
            # Through the model's own forward (under DDP, the wrapper's: it prepares the
            # gradient all-reduce), projecting one position only; the final hidden states
            # (after the last norm) come back with the others.
            out = model(input_ids=inputs["input_ids"], attention_mask=mask, position_ids=positions, use_cache=False,
                        output_hidden_states=True, logits_to_keep=1, **packed)
            hidden = out.hidden_states[-1]
            targets = labels[:, 1:]  # (B, T-1): position t predicts token t+1
            keep = targets != -100
            head = self.accelerator.unwrap_model(model).get_output_embeddings()
            if not keep.any():  # only filler rows (pad_to_batches): no loss, but a backward pass like the others,
                # through every parameter (the LM head included: under DDP a parameter without a gradient
                # leaves its all-reduce unlaunched here while the other processes wait in it)
                loss = out.logits.sum() * 0.0
                return (loss, None) if return_outputs else loss
            loss = chunked_cross_entropy(head, hidden[:, :-1][keep], targets[keep])
            loss = loss / (num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1))
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss: DDP averages it back
            return (loss, None) if return_outputs else loss

    return CPUSFTTrainer


def train_sft(model_dir: str | Path, examples: list[tuple[str, list[Step]]], out_dir: str | Path,
              opts: SFTOptions, train_on: Callable[[int, Step], bool] | None = None, device: str = "auto") -> Path:
    """Fine-tune the model in `model_dir` on `examples` on `device` (devices.py); returns
    `<out_dir>/final`. Resumes from the latest checkpoint in `out_dir`; returns at once if
    `final` exists."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from score_distill.train.packed_attention import register_packed_attention

    out, final = Path(out_dir), Path(out_dir) / "final"
    if (final / "config.json").exists():
        return final
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = build_dataset(tokenizer, examples, opts.max_length, train_on)
    if len(dataset) == 0:
        raise ValueError("no trainable tokens in the SFT examples")
    if opts.packing:
        dataset = pack_rows(dataset, opts.max_length)
    lengths = [len(ids) for ids in dataset["input_ids"]]  # the rows trained, before the fillers
    dataset = pad_to_batches(dataset, opts.batch_size, tokenizer.pad_token_id)
    processes = int(os.environ.get("WORLD_SIZE", "1") or 1)  # set by accelerate launch / torchrun
    accumulation = accumulation_steps(opts.batch_size, opts.micro_batch_size, processes)
    # Packed rows attend per sequence, without a (T, T) mask (train.packed_attention). The
    # attention is chosen once, at load, not switched on around each forward pass: activation
    # checkpointing re-runs the forward pass inside backward(), after compute_loss has
    # returned, and must run the same attention. On a GPU, TRL's own compute_loss passes the
    # collator's cu_seq_lens_q/k to it. Its name is not saved in config.json, so the
    # checkpoint loads with the default attention.
    attention = register_packed_attention() if opts.packing else None
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attention)
    peft_config = None
    if opts.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(r=opts.lora_r, lora_alpha=2 * opts.lora_r, target_modules="all-linear", task_type="CAUSAL_LM")
    use_cpu = training_device(device) == "cpu"
    if use_cpu and processes > 1:
        from score_distill.models.local import process_cores

        torch.set_num_threads(process_cores())  # the launcher's processes share the cores
    steps = math.ceil(opts.epochs * math.ceil(len(dataset) / opts.batch_size))
    args = SFTConfig(
        max_steps=opts.min_steps if steps < opts.min_steps else -1,
        output_dir=str(out), num_train_epochs=opts.epochs, learning_rate=opts.lr,
        per_device_train_batch_size=opts.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=opts.logging_steps,
        # No rotation by the trainer: it would delete the last whole checkpoint before the new one
        # is known to be whole (complete_checkpoints does it after).
        save_strategy="no" if opts.checkpoint_every_s > 0 else "epoch", save_total_limit=None,
        report_to=[], seed=opts.seed, data_seed=opts.seed,
        bf16=resolve_bf16(opts.bf16, "cpu" if use_cpu else "cuda"), use_cpu=use_cpu, dataloader_num_workers=0,
        # Sequences were cut to max_length already; packed rows are flattened by TRL's
        # padding-free collator, which takes position ids from each row's `seq_lengths`.
        max_length=None if opts.packing else opts.max_length, padding_free=opts.packing,
        # The rows are ready (rendered, cut, packed): TRL's preparation would drop the fillers
        # of pad_to_batches, which carry no label, and the batches would no longer be whole.
        dataset_kwargs={"skip_prepare_dataset": True},
        ddp_find_unused_parameters=False,  # every parameter gets a gradient: no extra graph traversal
        disable_tqdm=False, remove_unused_columns=False, activation_checkpointing=opts.activation_checkpointing,
        # Less padding per micro-batch: length-grouped, in an order that does not depend on the
        # number of processes (length_grouped_sampler, set in _trainer_class).
        optim="adamw_torch_fused",  # in place per tensor: no temporaries the size of all the weights
    )
    trainer = _trainer_class(SFTTrainer, use_cpu, opts.batch_size, opts.seed)(model=model, args=args, train_dataset=dataset,
                                                  processing_class=tokenizer, peft_config=peft_config)
    if opts.checkpoint_every_s > 0:
        trainer.add_callback(checkpoint_timer(opts.checkpoint_every_s))
    trainer.add_callback(complete_checkpoints())
    resume = resumable_checkpoint(out)
    start = checkpoint_step(resume) if resume is not None else 0
    began = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    seconds = time.monotonic() - began
    accelerator = trainer.accelerator
    main = accelerator.is_main_process
    partial = out / ".final.partial"  # one path for every process: saving may be collective
    if main:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    if peft_config is not None:  # merged adapters: a plain model directory, as without LoRA
        if main:
            accelerator.unwrap_model(trainer.model).merge_and_unload().save_pretrained(partial)
    else:  # gathers sharded weights (FSDP, ZeRO-3) on the way; only the main process writes
        trainer.save_model(str(partial))
    accelerator.wait_for_everyone()
    if main:
        tokenizer.save_pretrained(partial)
        (partial / "training_args.bin").unlink(missing_ok=True)
        with atomic_dir(final) as tmp:  # the finished directory appears whole, or not at all
            os.rmdir(tmp)
            os.replace(partial, tmp)
        summary = throughput_summary(lengths, opts.batch_size, trainer.state.global_step - start, seconds)
        atomic_write_json(out / "train_summary.json", {**summary, "resumed_from_step": start,
                                                        "device": training_device(device),
                                                        "processes": processes, "bf16": bool(args.bf16),
                                                        "packing": opts.packing})
        log.info("saved %s (%.0f tokens/s over %d steps)", final, summary["tokens_per_s"], summary["steps_this_call"])
    accelerator.wait_for_everyone()
    return final


def accumulation_steps(batch_size: int, micro_batch_size: int, processes: int) -> int:
    """Micro-batches each process accumulates per optimiser step, so that a step sees
    `batch_size` rows in all whatever the number of processes.

    >>> accumulation_steps(8, 2, 1), accumulation_steps(8, 2, 2), accumulation_steps(8, 4, 2)
    (4, 2, 1)
    >>> accumulation_steps(8, 4, 3)
    Traceback (most recent call last):
    ...
    score_distill.config.UsageError: sft.batch_size 8 is not a multiple of sft.micro_batch_size 4 x 3 processes
    """
    if batch_size % (micro_batch_size * processes):
        raise UsageError(f"sft.batch_size {batch_size} is not a multiple of sft.micro_batch_size {micro_batch_size} "
                         f"x {processes} processes")
    return batch_size // (micro_batch_size * processes)


def throughput_summary(lengths: list[int], batch_size: int, steps: int, seconds: float) -> dict[str, float]:
    """Training throughput of one call: the optimiser steps it ran, each counted at the mean
    step of the data (`batch_size` rows of its mean length, padding not counted), over the
    call's training wall time (steps and checkpoints; not the model load or the final save).

    >>> throughput_summary([100, 300], batch_size=2, steps=3, seconds=6.0)
    {'rows': 2, 'mean_tokens': 200.0, 'steps_this_call': 3, 'seconds_this_call': 6.0, 'tokens_per_s': 200.0}
    """
    mean = sum(lengths) / len(lengths)
    tokens = steps * min(batch_size, len(lengths)) * mean
    return {"rows": len(lengths), "mean_tokens": round(mean, 1), "steps_this_call": steps,
            "seconds_this_call": round(seconds, 1), "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else 0.0}
