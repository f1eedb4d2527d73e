from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_reuse.nn.layers import LayerNotFoundError, capture_output, get_layer, layer_names


def test_capture_is_not_overwritten_by_a_following_inplace_op() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten())
    x = torch.randn(2, 1, 6, 6)
    pre_relu = net[0](x).detach()
    with capture_output(net, "0") as store:
        net(x)
    assert float(pre_relu.min()) < 0
    assert torch.equal(store["output"], pre_relu)


def test_hook_removed_and_wrong_name_lists_valid_ones() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with capture_output(net, "0"):
        pass
    assert not net[0]._forward_hooks
    with pytest.raises(LayerNotFoundError, match=r"No layer named '2'.*Valid names: '0', '1'"):
        get_layer(net, "2")
    assert layer_names(net) == ["0", "1"]
