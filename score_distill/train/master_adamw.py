"""AdamW for a policy held in bf16: fp32 master weights and fp32 moments in the optimiser.

RL on a GPU holds the policy in bf16 (`RLOptions.bf16_policy`): the forward and backward
passes run without autocast casts, the gradients take half the memory, and the weights that
vLLM samples with are already in its dtype. The update itself cannot be made in bf16: a
weight of 0.01 is stored to about 4e-5 (8 bits of mantissa), and an Adam step is about the
learning rate, 7e-7 in the paper, so plain bf16 AdamW rounds nearly every step away. This
optimiser keeps, per parameter, an fp32 copy of the weight (the master) with AdamW's two
fp32 moments; each step updates the master from the bf16 gradient and writes it back,
rounded, into the bf16 parameter. Memory per parameter: 2 (weight) + 2 (gradient) + 12
(master and moments) bytes, as fp32 weights with bf16 autocast (4 + 4 + 8), but the
activations and the gradient pass are bf16. The same as `torch.optim.AdamW` (decoupled
weight decay) on fp32 parameters (tests/test_master_adamw.py).

    optimizer = MasterAdamW(model.parameters(), lr=7e-7)   # model in bf16
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

STATE_KEYS = ("master", "exp_avg", "exp_avg_sq")


class MasterAdamW(torch.optim.Optimizer):
    """AdamW whose state (`master`, `exp_avg`, `exp_avg_sq`) is fp32 whatever the
    parameters' dtype; the parameters receive the rounded master after every step."""

    def __init__(self, params: Iterable[Any], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: ARG002 (no closure: one pass per step)
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["master"] = p.detach().float().clone()
                    state["exp_avg"] = torch.zeros_like(state["master"])
                    state["exp_avg_sq"] = torch.zeros_like(state["master"])
                state["step"] += 1
                master, m, v, t = state["master"], state["exp_avg"], state["exp_avg_sq"], state["step"]
                grad = p.grad.float()  # one parameter's fp32 copy at a time
                master.mul_(1.0 - lr * decay)
                m.lerp_(grad, 1.0 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = (v.sqrt() / math.sqrt(1.0 - beta2**t)).add_(eps)
                master.addcdiv_(m, denom, value=-lr / (1.0 - beta1**t))
                p.copy_(master)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but the state stays fp32: torch casts floating-point state to each
        parameter's dtype, which would round the master weights and moments to bf16."""
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict["state"].items():
            p = params[index]
            for key in STATE_KEYS:
                if key in saved:
                    self.state[p][key] = saved[key].to(device=p.device, dtype=torch.float32)
