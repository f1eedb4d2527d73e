"""Side networks and the additive wrapper: exact identity at step 0, frozen base, errors, accounting."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lightning_reuse._warnings import LightningReuseWarning
from lightning_reuse.nn.fingerprint import module_fingerprint
from lightning_reuse.nn.layers import LayerNotFoundError
from lightning_reuse.nn.parameter_count import ParameterCount, count_parameters, format_parameter_count
from lightning_reuse.nn.side_network import (
    AdditiveModel,
    ShapeMismatchError,
    SideConv,
    SideMLP,
    build_side_network,
)
from lightning_reuse.samples.models import SmallCNN


def bn_base(seed: int = 0) -> nn.Module:
    """A base with BatchNorm and dropout (mode matters) whose running statistics are not trivial."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(1),
        nn.Linear(4 * 64, 10),
    )
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(16, 1, 8, 8))  # move the running statistics away from their defaults
    return net.eval().requires_grad_(False)


X = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("feature", "kind", "depth"),
    [(None, "mlp", 2), (None, "mlp", 3), ("4", "mlp", 2), ("2", "conv", 3), (None, "conv", 2)],
)
def test_model_equals_base_exactly_at_step_zero(feature: str | None, kind: str, depth: int) -> None:
    base = bn_base()
    expected = base(X)
    model = AdditiveModel.from_base(base, X, width=5, depth=depth, layer=feature, kind=kind)
    model.train()  # the wrapper in training mode must still evaluate the base in eval mode
    assert torch.equal(model(X), expected)
    assert not base.training and all(not m.training for m in base.modules())


def test_side_reads_the_named_feature() -> None:
    base = SmallCNN(width=4).requires_grad_(False)
    model = AdditiveModel.from_base(base, X, width=3, layer="pool")
    assert model.side.in_features == 4  # the pooled embedding, not the 64 pixels
    nn.init.normal_(model.side.out.weight)
    out_base, delta = model.parts(X)
    assert torch.allclose(delta, model.side(base.embed(X)))
    assert torch.allclose(model(X), out_base + delta)


def test_gradients_reach_the_side_only() -> None:
    base = bn_base()
    model = AdditiveModel.from_base(base, X, width=4, depth=3)
    model(X).sum().backward()
    assert all(p.grad is None for p in base.parameters())
    assert model.side.out.weight.grad is not None and model.side.out.weight.grad.abs().sum() > 0


def test_trainable_base_is_frozen_with_a_warning() -> None:
    base = SmallCNN(width=4)  # trainable, as it comes out of training
    with pytest.warns(LightningReuseWarning, match="froze them in place"):
        AdditiveModel(base, SideMLP(64, 10, width=2))
    assert not any(p.requires_grad for p in base.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an already-frozen base is silent
        AdditiveModel(base, SideMLP(64, 10, width=2))


def test_shared_parameters_are_refused() -> None:
    base = SmallCNN(width=4).requires_grad_(False)
    side = nn.Sequential(nn.Flatten(1), nn.Linear(64, 4), base.head)
    with pytest.raises(ValueError, match="shares 2 parameter"):
        AdditiveModel(base, side)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0}, "width\\[0\\]` must be an integer >= 1"),
        ({"width": -3, "depth": 3}, "must be an integer >= 1"),
        ({"width": (4, 0), "depth": 3}, "width\\[1\\]"),
        ({"width": (4, 4), "depth": 2}, "one int or 1 ints"),
        ({"width": 4, "depth": 4}, "`depth` must be 2 or 3"),
        ({"width": 2.5}, "must be an integer >= 1, got 2.5"),
    ],
)
def test_bad_sizes_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SideMLP(8, 2, **kwargs)


def test_output_shape_mismatch_is_a_clear_error() -> None:
    base = SmallCNN(width=4).requires_grad_(False)
    model = AdditiveModel(base, SideMLP(64, 7, width=2))
    with pytest.raises(ShapeMismatchError, match=r"does not match base output \(5, 10\)"):
        model(X)
    model = AdditiveModel(base, SideMLP(32, 10, width=2))
    with pytest.raises(ShapeMismatchError, match="32 features per sample, got \\(5, 1, 8, 8\\)"):
        model(X)
    with pytest.raises(ShapeMismatchError, match="kind='conv' needs an image-shaped"):
        AdditiveModel.from_base(base, X, layer="head", kind="conv")
    assert issubclass(ShapeMismatchError, ValueError)


def test_unknown_feature_lists_valid_names() -> None:
    base = SmallCNN(width=4).requires_grad_(False)
    with pytest.raises(LayerNotFoundError, match="Did you mean: 'block1'"):
        AdditiveModel(base, SideMLP(64, 10, width=2), layer="blok1")
    with pytest.raises(TypeError, match="must be torch.nn.Module"):
        AdditiveModel(base, lambda x: x)  # type: ignore[arg-type]


def test_config_round_trip_and_bad_kind() -> None:
    for side in (SideMLP(12, 3, width=(4, 5), depth=3), SideConv(2, 3, width=6, kernel_size=5)):
        rebuilt = build_side_network(side.config)
        assert type(rebuilt) is type(side) and rebuilt.config == side.config
        assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in side.parameters()]
    with pytest.raises(ValueError, match="`kind` in \\('mlp', 'conv'\\)"):
        build_side_network({"kind": "transformer"})


def test_parameter_count_against_a_manual_count() -> None:
    base = SmallCNN(width=4).requires_grad_(False)
    model = AdditiveModel(base, SideMLP(64, 10, width=(6, 3), depth=3))
    side_values = (64 * 6 + 6) + (6 * 3 + 3) + (3 * 10 + 10)
    base_values = (1 * 4 * 9 + 4) + (4 * 4 * 9 + 4) + (4 * 10 + 10)
    counts = count_parameters(model)
    assert counts == ParameterCount(trainable=side_values, total=side_values + base_values)
    assert counts.frozen == base_values
    assert format_parameter_count(counts).startswith(f"trainable params: {side_values:,} || all params:")
    tied = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    tied.append(tied[0])  # a shared layer is counted once
    assert count_parameters(tied).total == 12
    assert count_parameters(nn.ReLU()).trainable_fraction == 0.0


def test_base_fingerprint_sees_one_changed_value_and_buffers() -> None:
    base = bn_base()
    before = module_fingerprint(base)
    assert module_fingerprint(bn_base()) == before  # deterministic
    base[1].running_mean[0] += 1e-6
    assert module_fingerprint(base) != before


def test_integer_side_input_is_refused_at_construction_from_an_example() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(ids).mean(1))

    base = Tokens().requires_grad_(False)
    ids = torch.randint(0, 10, (3, 5), generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match=r"needs a float feature.*HINT: pass `layer=`.*\['embed'\]"):
        AdditiveModel.from_base(base, ids)
    model = AdditiveModel.from_base(base, ids, layer="embed")
    assert torch.equal(model(ids), base(ids))
