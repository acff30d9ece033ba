"""The models SCoRe-RL holds: the engine that samples the rollouts, the policy module it
trains (the same module for our engine, a second copy of the weights for vLLM), the
policy's optimiser, and the reference model of the optional KL penalty.

    sampler, policy = build_sampler("local", Path("runs/x/sft/final"), torch.device("cpu"), opts)
    optimizer = build_optimizer(policy, opts)
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from score_distill.config import UsageError
from score_distill.memory import release_memory

if TYPE_CHECKING:  # rl imports this module; both stay light for the command line
    from score_distill.models.base import PolicySampler
    from score_distill.train.rl import RLOptions


def policy_dtype(bf16: bool, bf16_policy: bool, device_type: str) -> str:
    """The dtype the policy's weights are held in: bf16 only on a CUDA device with bf16 on
    and `bf16_policy` (then `MasterAdamW` keeps fp32 master weights), else fp32.

    >>> policy_dtype(True, True, "cuda"), policy_dtype(True, True, "cpu"), policy_dtype(False, True, "cuda")
    ('bfloat16', 'float32', 'float32')
    """
    return "bfloat16" if bf16 and bf16_policy and device_type == "cuda" else "float32"


def require_cuda(device: Any) -> None:
    """vLLM samples on a CUDA GPU only."""
    if device.type != "cuda":
        raise UsageError(f"RL with the vllm engine runs on a CUDA GPU; the device here is {device} (use --engine local)")


def build_sampler(engine: str, path: Path, device: Any, opts: RLOptions) -> tuple[PolicySampler, Any]:
    """The engine that samples the rollouts, and the torch module being trained, from the
    model directory `path` on `device`. "local": our engine, whose own module is the policy
    (sampling always sees the live weights). "vllm": vLLM's engine in this process beside
    the policy, which gets the weights after each update (`VLLMModel.sync_weights`)."""
    import torch

    dtype = policy_dtype(opts.bf16, opts.bf16_policy, device.type)
    if engine == "local":
        from score_distill.models.local import LocalConfig, LocalModel

        where = str(device) if device.type == "cuda" else device.type  # several CPU processes: "cpu:0"
        local = LocalModel(path, LocalConfig(device=where, dtype=dtype, autocast_bf16=opts.bf16,
                                             seed=opts.rollout.seed, num_threads=opts.cpu_threads))
        return local, local.model
    if engine == "vllm":
        from transformers import AutoModelForCausalLM

        from score_distill.models.vllm_engine import VLLMConfig, VLLMModel

        require_cuda(device)
        policy = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
        config = VLLMConfig(dtype="bfloat16" if opts.bf16 else "float32", seed=opts.rollout.seed, in_process=True)
        return VLLMModel(path, config), policy
    raise ValueError(f"engine {engine!r}: expected local or vllm")


def build_optimizer(policy: Any, opts: RLOptions) -> Any:
    """AdamW over the policy: `MasterAdamW` (fp32 master weights and moments) for a bf16
    policy, else torch's fused AdamW, which updates each tensor in place (the default
    foreach step builds temporaries the size of all the weights, on top of its 2 states)."""
    import torch

    if next(policy.parameters()).dtype == torch.bfloat16:
        from score_distill.train.master_adamw import MasterAdamW

        return MasterAdamW(policy.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    device_type = next(policy.parameters()).device.type
    return torch.optim.AdamW(policy.parameters(), lr=opts.lr, weight_decay=opts.weight_decay,
                             fused=device_type in ("cpu", "cuda"))


class Reference:
    """The starting checkpoint, which gives the reference log-probs of the KL penalty (built
    only when `kl_coef` is not 0). It is only needed while a step's rollouts are scored, before the
    update, so by default it is read from disk for that and freed before the backward pass,
    which is the step's memory peak: the policy's gradients take its place. `keep` holds it
    in memory instead (no load per step). Under bf16 autocast it is held in bf16, since its
    matmuls run in bf16 there anyway (its log-probs then differ from the policy's at the start
    by the rounding of the weights: a logged KL of ~1e-7, not 0)."""

    def __init__(self, model_dir: str | Path, dtype: Any, device: Any, keep: bool) -> None:
        self.model_dir, self.dtype, self.device = model_dir, dtype, device
        self._model = self._load() if keep else None

    def _load(self) -> Any:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # one bar per step would flood the log
        try:
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=self.dtype)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        return model.to(self.device).eval().requires_grad_(False)

    @contextlib.contextmanager
    def loaded(self) -> Iterator[Any]:
        if self._model is not None:
            yield self._model
            return
        model = self._load()
        try:
            yield model
        finally:
            del model
            release_memory()
