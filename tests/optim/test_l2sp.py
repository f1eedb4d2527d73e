"""L2-SP against its formula (Li et al., ICML 2018), with the shared anchor machinery."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_reuse.optim import L2SP, l2sp_penalty


def net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    n = nn.Sequential()
    n.add_module("body", nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 4)))
    n.add_module("head", nn.Linear(4, 3))
    return n


def reference(model: nn.Sequential, pre: nn.Sequential, alpha: float, beta: float) -> float:
    total = 0.0
    for (name, p), q in zip(model.named_parameters(), pre.parameters()):
        if name.startswith("head."):
            total += beta / 2 * sum(float(v) ** 2 for v in p.detach().flatten())
        else:
            total += (
                alpha
                / 2
                * sum((float(a) - float(b)) ** 2 for a, b in zip(p.detach().flatten(), q.detach().flatten()))
            )
    return total


def test_penalty_and_gradient_match_formula() -> None:
    pre, model = net(0), net(1)
    reg = L2SP(model, alpha=0.3, beta=0.05, exclude="head", anchors=pre.state_dict())
    value = reg()
    assert float(value.detach()) == pytest.approx(reference(model, pre, 0.3, 0.05), rel=1e-5)
    value.backward()
    w, w0 = model.body[2].weight, pre.body[2].weight
    assert torch.allclose(w.grad, 0.3 * (w - w0).detach(), atol=1e-6)
    assert torch.allclose(model.head.weight.grad, 0.05 * model.head.weight.detach(), atol=1e-6)
    assert reg.distance() == pytest.approx(
        sum(
            float((p - q).detach().pow(2).sum())
            for p, q in zip(model.body.parameters(), pre.body.parameters())
        )
        ** 0.5,
        rel=1e-5,
    )


def test_default_anchors_are_current_values_and_state_round_trips() -> None:
    model = net(0)
    reg = L2SP(model, alpha=1.0)
    assert float(reg().detach()) == 0.0
    with torch.no_grad():
        model.body[0].bias.add_(2.0)
    assert float(reg().detach()) == pytest.approx(0.5 * 2 * 4.0)
    other = L2SP(net(3), alpha=0.0)
    other.load_state_dict(reg.state_dict())
    assert other.alpha == 1.0 and all(torch.equal(a, b) for a, b in zip(other.anchors, reg.anchors))


def test_float64_parameters_are_compared_in_float64() -> None:
    model = net(0).double()
    reg = L2SP(model, alpha=2.0, beta=0.0, exclude="head")
    assert all(a.dtype == torch.float64 for a in reg.anchors)
    with torch.no_grad():  # a shift that fp32 cannot represent next to 1.0 (its eps is 1.2e-7)
        model.body[0].bias.copy_(torch.ones(2, dtype=torch.float64))
    reg.anchors[1] = torch.ones(2, dtype=torch.float64)
    with torch.no_grad():
        model.body[0].bias.add_(1e-9)
    value = reg()
    assert value.dtype == torch.float64
    assert float(value.detach()) == pytest.approx(0.5 * 2.0 * 2 * 1e-18, rel=1e-6, abs=0)
    assert reg.distance() == pytest.approx(2**0.5 * 1e-9, rel=1e-6)
    value.backward()
    assert model.body[0].bias.grad.dtype == torch.float64
    assert torch.allclose(
        model.body[0].bias.grad, torch.full((2,), 2e-9, dtype=torch.float64), rtol=1e-6, atol=0
    )


def test_validation() -> None:
    with pytest.raises(ValueError, match="alpha"):
        L2SP(net(0), alpha=-1.0)
    with pytest.raises(ValueError, match="pair up"):
        l2sp_penalty([torch.zeros(1)], [], alpha=1.0)
