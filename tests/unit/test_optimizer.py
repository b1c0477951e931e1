"""The trainer's AdamW (core.training.module.adamw) is fused where PyTorch has the kernel, and its update is
plain AdamW's."""

import torch

from core.training.module import adamw


def _steps(make, steps=3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    groups = [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters()), "lr": 0.05}]
    opt = make(groups)
    x = torch.randn(16, 6)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    return opt, [p.detach().clone() for p in model.parameters()]


def test_fused_adamw_takes_the_steps_of_the_reference_adamw():
    ours, after = _steps(lambda g: adamw(g, lr=0.01, weight_decay=0.1))
    _, reference = _steps(lambda g: torch.optim.AdamW(g, lr=0.01, weight_decay=0.1, foreach=False))
    assert ours.defaults["fused"] is True
    for p, q in zip(after, reference):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_integer_or_meta_parameters_fall_back_to_the_unfused_loop():
    meta = torch.nn.Parameter(torch.zeros(3, device="meta"))
    assert not adamw([meta], lr=0.01).defaults["fused"]
