from __future__ import annotations

import pytest
import torch

from lightning_reuse.samples.digits import SHIFTS, apply_shift, load_digits_tensors, split_indices
from lightning_reuse.samples.models import SmallCNN, accuracy, train_classifier


def test_digits_shape_and_range() -> None:
    x, y = load_digits_tensors()
    assert x.shape == (1797, 1, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_split_indices_partition() -> None:
    parts = split_indices(1797, (0.5, 0.25, 0.25), seed=3)
    allidx = torch.cat(parts).sort().values
    assert torch.equal(allidx, torch.arange(1797))
    assert torch.equal(parts[0], split_indices(1797, (0.5, 0.25, 0.25), seed=3)[0])
    with pytest.raises(ValueError, match="fractions"):
        split_indices(10, (0.9, 0.9))


@pytest.mark.parametrize("kind", SHIFTS)
def test_shifts_keep_shape_range_and_grow_with_level(kind: str) -> None:
    x, _ = load_digits_tensors()
    x = x[:64]
    assert torch.equal(apply_shift(x, kind, 0.0), x)
    levels = {
        "noise": (0.1, 0.5),
        "blur": (0.5, 1.5),
        "salt_pepper": (0.05, 0.3),
        "rotation": (10, 60),
        "inversion": (0.2, 1.0),
        "none": (0.5, 1.0),
    }[kind]
    d = [float((apply_shift(x, kind, lv, seed=1) - x).abs().mean()) for lv in levels]
    out = apply_shift(x, kind, levels[1], seed=1)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    if kind != "none":
        assert 0 < d[0] < d[1]


def test_shift_rejects_bad_kind() -> None:
    with pytest.raises(ValueError, match="Unknown shift kind 'fog'"):
        apply_shift(torch.zeros(1, 1, 8, 8), "fog", 1.0)


def test_small_cnn_learns_digits() -> None:
    torch.manual_seed(0)
    x, y = load_digits_tensors()
    tr, te = split_indices(len(x), (0.7, 0.3))
    net = train_classifier(SmallCNN(width=16), x[tr], y[tr], epochs=15, lr=1e-2)
    assert accuracy(net, x[te], y[te]) > 0.85
    assert not net.training
