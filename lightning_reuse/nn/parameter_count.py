"""Parameter accounting, PEFT-style: numbers are returned; formatting is a separate function.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    >>> _ = net[0].requires_grad_(False)
    >>> counts = count_parameters(net)
    >>> counts.trainable, counts.total, counts.frozen
    (8, 23, 15)
    >>> format_parameter_count(counts)
    'trainable params: 8 || all params: 23 || trainable%: 34.7826'
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ParameterCount:
    """Parameter values (not tensors) of a module: ``trainable`` (requires_grad) and ``total``."""

    trainable: int
    total: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    @property
    def trainable_fraction(self) -> float:
        """``trainable / total`` (0.0 for a module without parameters)."""
        return self.trainable / self.total if self.total else 0.0


def count_parameters(module: nn.Module) -> ParameterCount:
    """Count the parameter values of ``module`` (shared parameters once)."""
    seen: dict[int, tuple[int, bool]] = {}
    for p in module.parameters():
        seen[id(p)] = (p.numel(), p.requires_grad)
    return ParameterCount(
        trainable=sum(n for n, grad in seen.values() if grad), total=sum(n for n, _ in seen.values())
    )


def format_parameter_count(counts: ParameterCount) -> str:
    """One line in PEFT's wording: ``trainable params: ... || all params: ... || trainable%: ...``."""
    return (
        f"trainable params: {counts.trainable:,} || all params: {counts.total:,} || "
        f"trainable%: {100 * counts.trainable_fraction:.4f}"
    )
