"""The embedded default data: scikit-learn's 8x8 digits, with reproducible splits and input shifts.

Nothing is downloaded: ``sklearn.datasets.load_digits`` ships inside scikit-learn (1797 images, 10 classes).

Example:
    >>> x, y = load_digits_tensors()
    >>> tuple(x.shape), x.dtype, int(y.max())
    ((1797, 1, 8, 8), torch.float32, 9)
    >>> noisy = apply_shift(x[:4], "noise", 0.5, seed=0)
    >>> noisy.shape == x[:4].shape
    True
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

Shift = Literal["none", "noise", "blur", "salt_pepper", "rotation", "inversion"]
SHIFTS: tuple[str, ...] = ("none", "noise", "blur", "salt_pepper", "rotation", "inversion")


def load_digits_tensors(normalize: bool = True) -> tuple[Tensor, Tensor]:
    """Return the digits as ``x: [1797, 1, 8, 8] float32`` in [0, 1] (if ``normalize``) and ``y: [1797] int64``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    if normalize:
        x = x / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    return x, y


def split_indices(n: int, fractions: tuple[float, ...], seed: int = 0) -> list[Tensor]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into parts of the given fractions (the last takes the rest).

    >>> [len(p) for p in split_indices(10, (0.5, 0.3, 0.2))]
    [5, 3, 2]
    """
    if not fractions or any(f < 0 for f in fractions) or sum(fractions) > 1.0 + 1e-9:
        raise ValueError(f"`fractions` must be non-negative and sum to at most 1, got {fractions}.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for i, f in enumerate(fractions):
        stop = n if i == len(fractions) - 1 and abs(sum(fractions) - 1.0) < 1e-9 else start + round(f * n)
        parts.append(perm[start:stop])
        start = stop
    return parts


def apply_shift(x: Tensor, kind: str, level: float, seed: int = 0) -> Tensor:
    """Apply a distribution shift of strength ``level`` (0 = none) to images ``x: [N, C, H, W]`` in [0, 1].

    Kinds: ``noise`` (Gaussian, std = level), ``blur`` (Gaussian kernel, sigma = level pixels),
    ``salt_pepper`` (fraction ``level`` of pixels set to 0 or 1), ``rotation`` (``level`` degrees),
    ``inversion`` (``level`` in [0, 1] blends towards ``1 - x``). Output is clamped to [0, 1].
    """
    if kind not in SHIFTS:
        raise ValueError(f"Unknown shift kind {kind!r}; expected one of {SHIFTS}.")
    if level < 0:
        raise ValueError(f"`level` must be >= 0, got {level}.")
    if kind == "none" or level == 0:
        return x.clone()
    g = torch.Generator().manual_seed(seed)
    if kind == "noise":
        out = x + level * torch.randn(x.shape, generator=g)
    elif kind == "blur":
        radius = max(1, int(round(2 * level)))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype)
        k1 = torch.exp(-(t**2) / (2 * level**2))
        k1 = k1 / k1.sum()
        k2 = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, -1, -1)
        out = F.conv2d(F.pad(x, [radius] * 4, mode="replicate"), k2, groups=x.shape[1])
    elif kind == "salt_pepper":
        u = torch.rand(x.shape, generator=g)
        salt = (torch.rand(x.shape, generator=g) < 0.5).to(x.dtype)
        out = torch.where(u < level, salt, x)
    elif kind == "rotation":
        theta = torch.tensor(level * torch.pi / 180.0)
        rot = torch.tensor(
            [[torch.cos(theta), -torch.sin(theta), 0.0], [torch.sin(theta), torch.cos(theta), 0.0]]
        )
        grid = F.affine_grid(rot.expand(x.shape[0], 2, 3).to(x.dtype), list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    else:  # inversion
        out = (1 - level) * x + level * (1 - x)
    return out.clamp(0.0, 1.0)


def digits_loader(
    x: Tensor, y: Tensor | None = None, batch_size: int = 64, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    """A single-process ``DataLoader`` over ``(x, y)`` (or ``(x,)``) with a seeded shuffle."""
    ds = TensorDataset(x) if y is None else TensorDataset(x, y)
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)
