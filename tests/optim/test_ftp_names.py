"""FTP's name rules on module-name boundaries, and refusals with a fix (sparse gradients)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_reuse._warnings import LightningReuseWarning
from lightning_reuse.optim import FTP, configure_ftp
from lightning_reuse.optim.anchors import excluded_state_keys


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(4, 4)
        self.head = nn.Sequential(nn.Linear(4, 2))
        self.myhead = nn.Linear(2, 2)


class Wrapper(pl.LightningModule):
    """A LightningModule holding its network as ``self.net``: parameter names ``net.head.*``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net()


def test_head_matches_net_head_from_a_lightning_module_but_not_myhead() -> None:
    module = Wrapper()
    opt = configure_ftp(module, torch.optim.SGD, lr=0.1)  # exclude="head" by default, names "net.head.0.*"
    net = module.net
    assert not opt.is_projected(net.head[0].weight) and not opt.is_projected(net.head[0].bias)
    assert opt.is_projected(net.body.weight) and opt.is_projected(net.myhead.weight)
    named = FTP(torch.optim.SGD(module.named_parameters(), lr=0.1), exclude=["net.head", "body.bias"])
    assert not named.is_projected(net.head[0].weight) and not named.is_projected(net.body.bias)
    assert named.is_projected(net.body.weight) and named.is_projected(net.myhead.bias)


def test_rule_matching_nothing_still_warns_and_partial_segments_never_match() -> None:
    module = Wrapper()
    for rule in ("classifier", "ead", "net.hea"):
        with pytest.warns(LightningReuseWarning, match=f"`exclude` rule '{rule}' matches no parameter"):
            FTP(torch.optim.SGD(module.named_parameters(), lr=0.1), exclude=rule)


def test_wise_ft_state_keys_use_the_same_boundaries() -> None:
    keys = excluded_state_keys("head", Wrapper(), "it is interpolated")
    assert keys == {"net.head.0.weight", "net.head.0.bias"}


def test_sparse_gradient_is_refused_naming_the_parameter_and_the_fix() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({"emb": nn.Embedding(10, 3, sparse=True), "head": nn.Linear(3, 2)})
    before = model["emb"].weight.detach().clone()
    opt = FTP(torch.optim.SGD(model.named_parameters(), lr=0.1), exclude="head")

    def step() -> None:
        opt.zero_grad()
        model["head"](model["emb"](torch.tensor([1, 2]))).sum().backward()
        opt.step()

    with pytest.raises(
        ValueError,
        match=r"cannot project `emb.weight`: its gradient is sparse.*HINT: .*"
        r"exclude='emb'.*sparse=False",
    ):
        step()
    assert torch.equal(model["emb"].weight, before)  # refused before anything moved
    opt = FTP(torch.optim.SGD(model.named_parameters(), lr=0.1), exclude=["head", "emb"])
    step()  # excluded, the sparse parameter takes the plain base update
    assert not torch.equal(model["emb"].weight, before)


def test_sparse_gradient_without_names_is_described_by_shape() -> None:
    emb = nn.Embedding(10, 3, sparse=True)
    opt = FTP(torch.optim.SGD(emb.parameters(), lr=0.1))
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(ValueError, match=r"a parameter of shape \[10, 3\] \(name unknown\).*HINT:"):
        opt.step()
