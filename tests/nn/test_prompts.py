"""Input transforms: placement, mask, prompt formula against a slow reference, Jacobian identity, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_reuse.nn.label_mapping import OneToOneLabelMapping, RandomLabelMapping
from lightning_reuse.nn.prompts import FullPrompt, PaddingPrompt
from lightning_reuse.nn.reprogrammed import ReprogrammedModel
from lightning_reuse.samples.digits import load_digits_tensors
from lightning_reuse.samples.models import SmallCNN, accuracy, train_classifier


def slow_padding_prompt(x, theta, source_hw, placed_hw, mean, std):
    """Pixel-by-pixel reference of ILM-VP's padding prompt (no resize, grey repeated to every channel)."""
    n, _, h_t, w_t = x.shape
    c_s = theta.shape[0]
    h_s, w_s = source_hw
    top, left = (h_s - placed_hw[0]) // 2, (w_s - placed_hw[1]) // 2
    out = torch.empty(n, c_s, h_s, w_s, dtype=torch.float64)
    for i in range(n):
        for c in range(c_s):
            for r in range(h_s):
                for q in range(w_s):
                    inside = top <= r < top + h_t and left <= q < left + w_t
                    if inside:
                        pixel = float(x[i, c if x.shape[1] > 1 else 0, r - top, q - left])
                    else:
                        pixel = 1.0 / (1.0 + torch.exp(-theta[c, r, q].double()).item())
                    out[i, c, r, q] = (pixel - mean[c]) / std[c]
    return out


@pytest.mark.parametrize(("target", "source"), [((1, 4, 4), (3, 7, 8)), ((3, 3, 5), (3, 6, 6))])
def test_padding_prompt_matches_slow_reference(target, source) -> None:
    mean, std = [0.2, 0.4, 0.5], [0.5, 0.25, 1.5]
    prompt = PaddingPrompt(target, source, mean=mean, std=std)
    with torch.no_grad():
        prompt.theta.normal_(generator=torch.Generator().manual_seed(0))
    x = torch.rand(3, *target, generator=torch.Generator().manual_seed(1))
    ref = slow_padding_prompt(x, prompt.theta.detach(), source[1:], target[1:], mean, std)
    torch.testing.assert_close(prompt(x).double(), ref, rtol=1e-5, atol=1e-6)


def test_padding_mask_layout_and_init() -> None:
    p = PaddingPrompt((1, 8, 8), (3, 12, 12))
    assert p.mask.shape == (3, 12, 12) and p.M is p.mask
    assert torch.all(p.mask[:, 2:10, 2:10] == 0) and int(p.mask.sum()) == 3 * (144 - 64)
    assert torch.all(p.theta == 0) and torch.all(p.prompt()[p.mask.bool()] == 0.5)
    assert p.num_prompt_parameters == 240


def test_full_prompt_mask_everywhere_and_zero_at_init() -> None:
    for act in ("tanh", "identity"):
        p = FullPrompt((1, 8, 8), (1, 10, 10), activation=act)
        assert torch.all(p.mask == 1)
        x = torch.rand(2, 1, 8, 8)
        torch.testing.assert_close(p(x), F.pad(x, (1, 1, 1, 1)))


def test_resize_and_channel_repeat_match_interpolate() -> None:
    p = PaddingPrompt((1, 8, 8), (3, 32, 32), resize=16, resize_mode="bilinear")
    x = torch.rand(2, 1, 8, 8)
    placed = p.place(x)
    ref = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    torch.testing.assert_close(placed[:, :, 8:24, 8:24], ref)
    assert torch.all(placed * p.mask == 0)  # the border is only the prompt's
    assert p.num_prompt_parameters == 3 * (32 * 32 - 16 * 16)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "identity"])
def test_jacobian_is_diagonal_and_equals_jacobian_diag(activation: str) -> None:
    p = FullPrompt((1, 3, 3), (2, 4, 4), mean=[0.1, 0.3], std=[0.5, 2.0], activation=activation)
    p.mask[:, 0, :] = 0  # a partial mask
    with torch.no_grad():
        p.theta.uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
    x = torch.rand(1, 1, 3, 3)
    jac = torch.autograd.functional.jacobian(
        lambda th: torch.func.functional_call(p, {"theta": th}, (x,)), p.theta
    )
    jac = jac.reshape(32, 32)
    torch.testing.assert_close(jac, torch.diag(p.jacobian_diag().flatten()))


def test_prompt_jacobian_identity_through_source_and_mapping() -> None:
    """dg/dtheta = L * df_s/du * diag(M phi'(theta) / std) (the identity the NTK screening uses)."""
    torch.manual_seed(0)
    source = SmallCNN(in_channels=3, num_classes=6, width=3).double()
    transform = PaddingPrompt((1, 3, 3), (3, 5, 5), mean=0.4, std=0.3).double()
    mapping = RandomLabelMapping(6, 4, seed=1)
    model = ReprogrammedModel(source, transform, mapping).double()
    x = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    theta = transform.theta.detach().clone()
    jac_g = torch.func.jacrev(lambda th: torch.func.functional_call(model, {"transform.theta": th}, (x,)))(
        theta
    )
    u = transform(x).detach()
    jac_f = torch.func.jacrev(source)(u)  # [2, K, 2, C, H, W]; samples are independent
    per_sample = torch.stack([jac_f[i, :, i] for i in range(2)])  # [2, K, C, H, W]
    expected = torch.einsum("ck,nkp->ncp", mapping.matrix().double(), per_sample.flatten(2))
    expected = expected * transform.jacobian_diag().flatten()
    torch.testing.assert_close(jac_g.flatten(2), expected)
    assert torch.all(jac_g.flatten(2)[..., ~transform.mask.bool().flatten()] == 0)  # unmasked: nothing


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="larger than the source input"):
        PaddingPrompt((1, 16, 16), (3, 12, 12))
    with pytest.raises(ValueError, match="larger than the source input"):
        FullPrompt((1, 8, 8), (3, 12, 12), resize=14)
    with pytest.raises(ValueError, match="Channel counts do not fit.*2 channels.*3"):
        PaddingPrompt((2, 8, 8), (3, 12, 12))
    with pytest.raises(ValueError, match="no border to train"):
        PaddingPrompt((1, 8, 8), (1, 8, 8))
    with pytest.raises(ValueError, match="one value per source channel"):
        PaddingPrompt((1, 8, 8), (3, 12, 12), mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="`std` must be > 0"):
        PaddingPrompt((1, 8, 8), (1, 12, 12), std=0.0)
    with pytest.raises(ValueError, match="`activation` must be one of"):
        PaddingPrompt((1, 8, 8), (1, 12, 12), activation="relu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(channels, height, width\)"):
        PaddingPrompt((8, 8), (1, 12, 12))
    p = PaddingPrompt((1, 8, 8), (3, 12, 12))
    with pytest.raises(
        ValueError, match=r"expects target images of shape \[N, 1, 8, 8\], got \[2, 3, 8, 8\]"
    ):
        p(torch.zeros(2, 3, 8, 8))


def test_full_prompt_alone_really_learns_where_it_must() -> None:
    """Target = digits plus a bold "0" drawn over it: the frozen source is at chance until the prompt undoes it."""
    x, y = load_digits_tensors()
    torch.manual_seed(0)
    source = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    train_classifier(source, x, y, epochs=10, lr=1e-2)
    assert accuracy(source, x, y) > 0.9
    pattern = 2.0 * x[y == 0].mean(0, keepdim=True)  # a bold "0" drawn over every image
    x_target = x + pattern
    model = ReprogrammedModel(
        source, FullPrompt((1, 8, 8), (1, 8, 8), activation="identity"), OneToOneLabelMapping(10, 10)
    )
    frozen = {k: v.clone() for k, v in source.state_dict().items()}
    before = accuracy(model, x_target, y)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(3):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            F.cross_entropy(model(x_target[idx]), y[idx]).backward()
            opt.step()
    after = accuracy(model, x_target, y)
    assert before < 0.3 and after > 0.7, (before, after)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in frozen.items())
    assert not source.training
