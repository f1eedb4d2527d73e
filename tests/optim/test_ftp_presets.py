"""FTP presets: the paper's defaults (weight decay 0) and a step that matches a slow reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_reuse import FTPSGD, FTPAdamW, configure_ftp


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("body", nn.Linear(4, 4))
    model.add_module("head", nn.Linear(4, 2))
    return model


def _group_decay(opt) -> list[float]:
    return [g["weight_decay"] for g in opt.base_optimizer.param_groups]


def test_presets_default_to_paper_weight_decay() -> None:
    model = _model()
    assert _group_decay(FTPAdamW(model.named_parameters(), exclude="head")) == [0.0]
    assert _group_decay(FTPSGD(model.named_parameters(), exclude="head")) == [0.0]
    assert _group_decay(configure_ftp(model)) == [0.0]


def test_configure_ftp_keeps_a_given_weight_decay_and_other_optimizers_defaults() -> None:
    model = _model()
    assert _group_decay(configure_ftp(model, weight_decay=0.05)) == [0.05]
    assert _group_decay(configure_ftp(model, torch.optim.SGD, lr=0.1)) == [0.0]
    assert _group_decay(configure_ftp(model, torch.optim.Adam)) == [0.0]


def test_ftpadamw_default_step_has_no_decay_on_excluded_head() -> None:
    """Slow reference: with a zero gradient on the head, AdamW without decay leaves the head unchanged."""
    model = _model()
    opt = FTPAdamW(model.named_parameters(), lr=1e-1, exclude="head")
    before = model.head.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(model.head.weight.detach(), before)


@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_ftpadamw_excluded_head_matches_plain_adamw(decay: float) -> None:
    """The excluded head takes AdamW's own update (reference: a plain ``torch.optim.AdamW``)."""
    model, ref = _model(), _model()
    opt = FTPAdamW(model.named_parameters(), lr=1e-2, weight_decay=decay, exclude="head")
    ref_opt = torch.optim.AdamW(ref.head.parameters(), lr=1e-2, weight_decay=decay)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in model.parameters()]
        for p, q, gr in zip(model.parameters(), ref.parameters(), grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        ref_opt.step()
    torch.testing.assert_close(model.head.weight, ref.head.weight)
    torch.testing.assert_close(model.head.bias, ref.head.bias)
