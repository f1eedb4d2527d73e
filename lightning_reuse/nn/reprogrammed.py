"""A reprogrammed model ``g(x) = L(f_s(T_theta(x)))``: frozen source, trainable input transform and mapping.

References: Elsayed, Goodfellow, Sohl-Dickstein, "Adversarial Reprogramming of Neural Networks", ICLR 2019;
Chen et al., "Understanding and Improving Visual Prompting: A Label-Mapping Perspective", CVPR 2023.

Example:
    >>> import torch
    >>> from lightning_reuse.nn.label_mapping import FrequencyLabelMapping
    >>> from lightning_reuse.nn.prompts import PaddingPrompt
    >>> from lightning_reuse.samples import SmallCNN
    >>> source = SmallCNN(num_classes=10, width=4)
    >>> model = ReprogrammedModel(source, PaddingPrompt((1, 6, 6), (1, 8, 8)), FrequencyLabelMapping(10, 3))
    >>> model(torch.rand(5, 1, 6, 6)).shape
    torch.Size([5, 3])
    >>> source.training, any(p.requires_grad for p in source.parameters())
    (False, False)
    >>> [name for name, _ in model.named_trainable_parameters()]
    ['transform.theta']
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_reuse.nn.label_mapping import LabelMapping
from lightning_reuse.nn.parameter_count import count_parameters
from lightning_reuse.nn.prompts import InputTransform


class ReprogrammedModel(nn.Module):
    """``forward(x_target) -> target logits`` through a frozen, eval-mode source model.

    The source's parameters get ``requires_grad=False`` and the source is kept in eval mode: :meth:`train`
    puts the transform and mapping in the requested mode but leaves the source in eval mode (so BatchNorm
    statistics and dropout of the source never change).

    Args:
        source: the pre-trained model; takes ``[N, *transform.source_shape]``, returns ``[N, K_s]`` logits.
        transform: the trainable input transform ``T_theta`` (e.g. :class:`~lightning_reuse.nn.PaddingPrompt`).
        mapping: the label mapping ``L`` from ``K_s`` to ``C`` logits.
        check: run one dummy sample through the chain at construction, so shape errors show at once.

    Raises:
        TypeError: a part is not of the expected type.
        ValueError: the source does not accept the transform's output or its output size is not
            ``mapping.num_source``.
    """

    def __init__(
        self, source: nn.Module, transform: InputTransform, mapping: LabelMapping, check: bool = True
    ) -> None:
        super().__init__()
        for name, value, kind in (
            ("source", source, nn.Module),
            ("transform", transform, InputTransform),
            ("mapping", mapping, LabelMapping),
        ):
            if not isinstance(value, kind):
                raise TypeError(f"`{name}` must be a {kind.__name__}, got {type(value).__name__}.")
        self.source = source
        self.transform = transform
        self.mapping = mapping
        self.freeze_source()
        if check:
            self.check_shapes()

    def freeze_source(self) -> None:
        """Set ``requires_grad=False`` on every source parameter and put the source in eval mode."""
        self.source.requires_grad_(False)
        self.source.eval()

    @torch.no_grad()
    def check_shapes(self) -> None:
        """Run one zero target sample through transform, source and mapping; raise a clear error on mismatch."""
        ref = next(iter(self.transform.parameters()))
        x = torch.zeros(1, *self.transform.target_shape, dtype=ref.dtype, device=ref.device)
        u = self.transform(x)
        try:
            out = self.source(u)
        except RuntimeError as err:
            raise ValueError(
                f"The source model ({type(self.source).__name__}) rejected an input of shape {list(u.shape)} "
                f"(the transform's source_shape {self.transform.source_shape}): {err}. HINT: set `source_shape` "
                "(channels, height, width) to what the source model expects."
            ) from err
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] != self.mapping.num_source:
            got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"The source model must return logits [N, K_s] with K_s = mapping.num_source = "
                f"{self.mapping.num_source}, got {got}. HINT: build the mapping with num_source equal to the "
                "source's number of outputs (e.g. 1000 for ImageNet)."
            )

    @override
    def train(self, mode: bool = True) -> ReprogrammedModel:
        """Set train/eval mode of transform and mapping; the source always stays in eval mode."""
        super().train(mode)
        self.source.eval()
        return self

    def source_logits(self, x: Tensor) -> Tensor:
        """``f_s(T_theta(x))``: the source's ``[N, K_s]`` logits on prompted target inputs."""
        return self.source(self.transform(x))

    def forward(self, x: Tensor) -> Tensor:
        """``g(x) = L(f_s(T_theta(x)))``: target logits ``[N, C]``."""
        return self.mapping(self.source_logits(x))

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the transform and mapping parameters that require grad."""
        for prefix, part in (("transform", self.transform), ("mapping", self.mapping)):
            for name, p in part.named_parameters():
                if p.requires_grad:
                    yield f"{prefix}.{name}", p

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that train: the prompt ``theta`` (and a learned mapping's weights)."""
        return [p for _, p in self.named_trainable_parameters()]

    def num_trainable_parameters(self) -> int:
        """Number of trainable scalars (all of ``theta``, including entries outside the mask)."""
        return count_parameters(self.transform).trainable + count_parameters(self.mapping).trainable
