"""A small CNN for 8x8 digits: the stand-in pre-trained source in tests, recipes and benchmarks.

Example:
    >>> import torch
    >>> net = SmallCNN(num_classes=10, width=8)
    >>> net(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """``conv(3x3)-ReLU`` blocks (named ``block1`` ... ``blockD``), global average pool, linear ``head``.

    No BatchNorm, so per-sample gradients, NTKs and eval/train mode are all well defined.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        if depth < 1 or width < 1 or num_classes < 1:
            raise ValueError(
                f"SmallCNN needs depth, width, num_classes >= 1; got depth={depth}, width={width}, "
                f"num_classes={num_classes}."
            )
        self.depth = depth
        c = in_channels
        for i in range(depth):  # readable names for hooks and stitching: "block1", ...
            self.add_module(f"block{i + 1}", nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.ReLU()))
            c = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features ``[N, width]``."""
        for i in range(self.depth):
            x = getattr(self, f"block{i + 1}")(x)
        return self.pool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Plain-torch Adam training loop (no Lightning): a quick way to make a "pre-trained" source."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode (mode restored afterwards)."""
    was_training = model.training
    model.eval()
    correct = sum(
        int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
        for i in range(0, len(x), batch_size)
    )
    model.train(was_training)
    return correct / max(1, len(x))
