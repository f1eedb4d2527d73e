"""Stitch layers, adapter choice from shapes, cut-point discovery and the stitched network."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lightning_reuse.nn.layers import LayerNotFoundError
from lightning_reuse.nn.stitch import (
    AffineStitch,
    ConvStitch,
    DownsampleStitch,
    FlattenLinearStitch,
    LinearStitch,
    PooledDownsampleStitch,
    PooledLinearStitch,
    UpsampleStitch,
    choose_stitch,
    make_stitch,
)
from lightning_reuse.nn.stitched import (
    StitchedModel,
    layer_output,
    run_with_replaced_output,
    stitchable_points,
)
from lightning_reuse.samples.digits import load_digits_tensors
from lightning_reuse.samples.models import SmallCNN, accuracy, train_classifier


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.short = nn.Identity() if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x)))) + self.short(x))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.block1 = _Block(8, 8, 1)
        self.block2 = _Block(8, 16, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.block2(self.block1(self.stem(x)))).flatten(1))


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor]:
    x, y = load_digits_tensors()
    return x[:600], y[:600]


@pytest.fixture(scope="module")
def trained(digits: tuple[Tensor, Tensor]) -> SmallCNN:
    torch.manual_seed(0)
    x, y = digits
    return train_classifier(SmallCNN(width=16, depth=2), x[:400], y[:400], epochs=20, seed=0)


@pytest.mark.parametrize(
    ("sender", "receiver", "kind", "cls"),
    [
        ((8, 4, 4), (16, 4, 4), "conv1x1", ConvStitch),
        ((8, 8, 8), (16, 4, 4), "downsample", DownsampleStitch),
        ((8, 8, 8), (16, 2, 4), "downsample", DownsampleStitch),
        ((8, 2, 2), (16, 8, 8), "upsample", UpsampleStitch),
        ((8, 4, 4), (10,), "flatten_linear", FlattenLinearStitch),
        ((8,), (10,), "linear", LinearStitch),
    ],
)
def test_adapter_choice_from_shapes(sender: tuple, receiver: tuple, kind: str, cls: type) -> None:
    assert choose_stitch(sender, receiver) == kind
    stitch = make_stitch(sender, receiver)
    assert type(stitch) is cls
    stitch.eval()
    assert stitch(torch.randn(3, *sender)).shape == (3, *receiver)
    fitted = AffineStitch(sender, receiver).fit(torch.randn(40, *sender), torch.randn(40, *receiver))
    assert fitted(torch.randn(3, *sender)).shape == (3, *receiver)


def test_adapter_layouts_follow_the_papers() -> None:
    down = make_stitch((8, 8, 8), (16, 2, 2))
    conv = [m for m in down.modules() if isinstance(m, nn.Conv2d)][0]
    assert conv.kernel_size == conv.stride == (4, 4)  # kernel = stride = size ratio
    up = make_stitch((8, 2, 2), (16, 8, 8))
    assert [type(m).__name__ for m in up] == ["BatchNorm2d", "Upsample", "Conv2d", "BatchNorm2d"]
    assert up[1].mode == "nearest" and up[2].kernel_size == (1, 1)
    plain = UpsampleStitch(8, 16, 4, batch_norm=False)
    assert [type(m).__name__ for m in plain if not isinstance(m, nn.Identity)] == ["Upsample", "Conv2d"]
    bansal = make_stitch((8, 4, 4), (16, 4, 4))
    assert [type(m).__name__ for m in bansal] == ["BatchNorm2d", "Conv2d", "BatchNorm2d"]
    assert bansal[1].kernel_size == (1, 1)


def test_pooled_adapters_only_mix_channels() -> None:
    down = make_stitch((8, 8, 8), (16, 2, 2), adapter="pooled")
    assert isinstance(down, PooledDownsampleStitch)
    assert all(m.kernel_size == (1, 1) for m in down.modules() if isinstance(m, nn.Conv2d))
    head = make_stitch((8, 4, 4), (10,), adapter="pooled")
    assert isinstance(head, PooledLinearStitch) and head.eval()(torch.randn(3, 8, 4, 4)).shape == (3, 10)
    # a spatially constant input gives a spatially constant output: no pixel mixing
    out = down.eval()(torch.randn(2, 8, 1, 1).expand(2, 8, 8, 8))
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))
    assert isinstance(make_stitch((8, 2, 2), (16, 8, 8), adapter="pooled"), UpsampleStitch)
    with pytest.raises(ValueError, match="`adapter` must be"):
        make_stitch((8,), (4,), adapter="big")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sender", "receiver", "match"),
    [
        ((8,), (4, 2, 2), "vector sender"),
        ((8, 6, 6), (4, 4, 4), "integer multiples"),
        ((8, 8, 2), (4, 4, 4), "larger in one dimension"),
        ((8, 8), (4,), "per-sample shape"),
    ],
)
def test_impossible_shapes_are_clear_errors(sender: tuple, receiver: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_stitch(sender, receiver)


def test_explicit_kind_must_fit_the_shapes() -> None:
    with pytest.raises(ValueError, match="need 'downsample'"):
        make_stitch((8, 8, 8), (4, 4, 4), kind="conv1x1")
    with pytest.raises(ValueError, match="`kind` must be"):
        make_stitch((8, 8, 8), (4, 4, 4), kind="bogus")  # type: ignore[arg-type]


def test_stitchable_points_shapes_and_residual_cleanliness() -> None:
    torch.manual_seed(0)
    net = TinyResNet().eval()
    points = {p.name: p for p in stitchable_points(net, torch.randn(6, 1, 8, 8))}
    assert points["stem"].shape == (8, 8, 8)
    assert points["block2"].shape == (16, 4, 4)
    assert points["head"].shape == (10,)
    # block outputs are clean cuts; a layer inside a residual block is bypassed by the skip path
    assert points["stem"].clean and points["block1"].clean and points["block2"].clean
    assert points["block1.conv1"].clean is False and points["block2.conv2"].clean is False
    assert net.training is False
    top = [p.name for p in stitchable_points(net, torch.randn(2, 1, 8, 8), check_cut=False, max_depth=1)]
    assert top == ["stem", "block1", "block2", "pool", "head"]


def test_layer_output_and_replacement_reproduce_the_model() -> None:
    torch.manual_seed(0)
    net = TinyResNet().eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        act = layer_output(net, "block1", x)
        out = run_with_replaced_output(net, "block1", torch.zeros_like(x), act)
        torch.testing.assert_close(out, net(x))
    with pytest.raises(ValueError, match="Cannot inject"):
        run_with_replaced_output(net, "block1", x, torch.zeros(5, 3, 8, 8))


def test_identity_stitch_on_itself_gives_the_models_own_accuracy(
    trained: SmallCNN, digits: tuple[Tensor, Tensor]
) -> None:
    x, y = digits[0][400:], digits[1][400:]
    own = accuracy(trained, x, y)
    assert own > 0.5  # a trained model, far above chance (0.1)
    for layer in ("block1", "block2", "pool"):
        stitched = StitchedModel(trained, layer, trained, layer, stitch=nn.Identity())
        assert accuracy(stitched, x, y) == own
        with torch.no_grad():
            torch.testing.assert_close(stitched(x), trained(x))
    # the closed-form stitch fitted between a layer and itself reproduces it (identity on live channels;
    # a dead ReLU channel gets weight 0, which the pseudo-inverse's minimum-norm solution picks)
    with torch.no_grad():
        act = layer_output(trained, "block1", x)
    ls = AffineStitch(act.shape[1:], act.shape[1:]).fit(act, act)
    live = act.flatten(2).amax(dim=(0, 2)) > 0
    torch.testing.assert_close(ls.weight[live][:, live], torch.eye(int(live.sum())), atol=1e-4, rtol=0)
    torch.testing.assert_close(ls(act), act, atol=1e-4, rtol=0)
    assert accuracy(StitchedModel(trained, "block1", trained, "block1", stitch=ls), x, y) == own


def test_stitched_model_freezes_halves_and_only_the_stitch_gets_gradients(trained: SmallCNN) -> None:
    receiver = SmallCNN(width=16, depth=3)
    trained.zero_grad(set_to_none=True)
    stitched = StitchedModel(trained, "block1", receiver, "block2", example_input=torch.randn(4, 1, 8, 8))
    assert isinstance(stitched.stitch, ConvStitch)
    stitched.train()
    assert stitched.stitch.training and not stitched.sender.training and not stitched.receiver.training
    stitched(torch.randn(8, 1, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in stitched.stitch.parameters())
    assert all(p.grad is None for p in [*trained.parameters(), *receiver.parameters()])


def test_wrong_layer_name_lists_valid_names(trained: SmallCNN) -> None:
    with pytest.raises(LayerNotFoundError, match=r"Did you mean: 'block1'.*Valid names: 'block1'"):
        StitchedModel(trained, "blokc1", trained, "block2", stitch=nn.Identity())
    with pytest.raises(ValueError, match="No layer named 'layer9'.*Valid names:.*'head'"):
        StitchedModel(trained, "block1", trained, "layer9", stitch=nn.Identity())


def test_auto_stitch_needs_an_example_input_or_shape(trained: SmallCNN) -> None:
    with pytest.raises(ValueError, match="example_input"):
        StitchedModel(trained, "block1", trained, "block2")
    by_shape = StitchedModel(trained, "block1", trained, "head", input_shape=(1, 8, 8))  # traced on zeros
    assert isinstance(by_shape.stitch, FlattenLinearStitch) and by_shape.receiver_shape == (10,)


@pytest.mark.parametrize(
    ("sender", "receiver"),
    [
        ((8, 4, 4), (16, 4, 4)),
        ((8, 8, 8), (16, 2, 2)),
        ((8, 2, 2), (16, 8, 8)),
        ((8, 4, 4), (10,)),
        ((8,), (10,)),
    ],
)
def test_paper_adapters_are_bare(sender: tuple, receiver: tuple) -> None:
    """The paper's adapters have no BatchNorm, and equal a hand-written conv/linear map (slow reference)."""
    torch.manual_seed(0)
    stitch = make_stitch(sender, receiver, adapter="paper").train()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in stitch.modules())
    x = torch.randn(3, *sender)
    (layer,) = [m for m in stitch.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if isinstance(layer, nn.Linear):
        ref = x.flatten(1) @ layer.weight.T + layer.bias
    else:
        if len(receiver) == 3 and receiver[1] > sender[1]:  # nearest upsampling: repeat each pixel
            f = receiver[1] // sender[1]
            x_ref = x.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)
        else:
            x_ref = x
        k = layer.kernel_size[0]
        patches = x_ref.unfold(2, k, k).unfold(3, k, k)  # [N, C, H', W', k, k]
        ref = torch.einsum("nchwij,ocij->nohw", patches, layer.weight) + layer.bias[None, :, None, None]
    torch.testing.assert_close(stitch(x), ref, rtol=1e-5, atol=1e-5)
