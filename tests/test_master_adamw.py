"""MasterAdamW: AdamW for a bf16 policy with fp32 master weights and moments. On fp32
parameters it is torch's AdamW; on bf16 ones it keeps the small steps that bf16 rounds away;
a checkpoint of it resumes in fp32."""

from __future__ import annotations

import torch

from score_distill.train.master_adamw import MasterAdamW


def grads(shape: tuple[int, ...], steps: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(steps)]


def run(opt: torch.optim.Optimizer, p: torch.Tensor, gs: list[torch.Tensor]) -> None:
    for g in gs:
        p.grad = g.to(p.dtype)
        opt.step()


def test_on_fp32_parameters_it_is_torch_adamw():
    start = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    ours, theirs = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    gs = grads((4, 3), 6)
    run(MasterAdamW([ours], lr=0.01, betas=(0.8, 0.95), weight_decay=0.1), ours, gs)
    run(torch.optim.AdamW([theirs], lr=0.01, betas=(0.8, 0.95), weight_decay=0.1, foreach=False), theirs, gs)
    torch.testing.assert_close(ours, theirs, atol=1e-7, rtol=1e-6)
    assert not torch.equal(ours, start)


def test_on_bf16_parameters_small_steps_add_up_instead_of_rounding_away():
    """A weight of 0.01 is held in bf16 to about 6e-5; 200 Adam steps of lr 1e-6 with a
    constant gradient move it by 2e-4 (each step about lr). Plain bf16 AdamW loses each
    step to rounding and never moves; the fp32 master keeps them."""
    start = torch.full((8,), 0.01, dtype=torch.bfloat16)
    ours, plain = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    gs = [torch.ones(8)] * 200
    opt = MasterAdamW([ours], lr=1e-6)
    run(opt, ours, gs)
    run(torch.optim.AdamW([plain], lr=1e-6, foreach=False), plain, gs)
    assert torch.equal(plain, start)
    master = opt.state[ours]["master"]
    assert master.dtype == torch.float32 and opt.state[ours]["exp_avg_sq"].dtype == torch.float32
    torch.testing.assert_close(master, torch.full((8,), float(start[0]) - 200e-6), atol=2e-7, rtol=0)
    assert torch.equal(ours.detach(), master.to(torch.bfloat16)) and float(ours.detach()[0]) < float(start[0])


def test_a_checkpoint_resumes_with_fp32_state():
    start = torch.randn(5, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    gs = grads((5,), 8, seed=3)
    whole = start.clone().requires_grad_(True)
    run(MasterAdamW([whole], lr=1e-3), whole, gs)
    first = start.clone().requires_grad_(True)
    opt = MasterAdamW([first], lr=1e-3)
    run(opt, first, gs[:4])
    saved = opt.state_dict()
    resumed = first.detach().clone().requires_grad_(True)
    again = MasterAdamW([resumed], lr=1e-3)
    again.load_state_dict(saved)
    assert all(again.state[resumed][k].dtype == torch.float32 for k in ("master", "exp_avg", "exp_avg_sq"))
    run(again, resumed, gs[4:])
    assert torch.equal(resumed, whole)
