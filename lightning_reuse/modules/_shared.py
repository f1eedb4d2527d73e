"""What every LightningModule here shares: the ``optimizer`` option and the way a batch is read.

- ``optimizer``: the LightningCLI-standard factory ``params -> torch.optim.Optimizer`` (Lightning's
  ``lightning.pytorch.cli.OptimizerCallable``), or ``None`` for the module's documented default. In YAML a
  factory is a class path: ``optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.01, momentum: 0.9}}``;
  in Python a ``lambda params: ...`` or a ``functools.partial``.
- Batches: :func:`lightning_reuse.nn.batch.split_batch` reads them; a training or evaluation batch must carry
  targets (:func:`labelled_batch`).

Example:
    >>> import torch
    >>> labelled_batch((torch.zeros(2, 3), torch.tensor([0, 1])), who="A module")[1].tolist()
    [0, 1]
    >>> check_optimizer(None, lr=0.1, weight_decay=0.0, who="A module") is None
    True
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from lightning_reuse.nn.batch import split_batch

OptimizerCallable = Callable[[Iterable[Any]], torch.optim.Optimizer]
"""``params -> torch.optim.Optimizer``: what each module's ``optimizer`` argument takes (as in LightningCLI)."""

DEPRECATED_OPTIMIZER_NAMES: tuple[str, ...] = ("adam", "sgd")


def check_optimizer(optimizer: Any, *, lr: float, weight_decay: float, who: str) -> OptimizerCallable | None:
    """Validate an ``optimizer`` argument; return the factory to use (``None``: the module's default).

    The strings ``"adam"`` and ``"sgd"`` (the option before the factory) still work for one release, with a
    :class:`DeprecationWarning`: ``"adam"`` is the default, ``"sgd"`` is SGD with momentum 0.9 at ``lr`` and
    ``weight_decay``.

    Raises:
        ValueError: ``optimizer`` is neither ``None``, a callable nor one of the deprecated strings.
    """
    if optimizer is None or (callable(optimizer) and not isinstance(optimizer, str)):
        return optimizer
    if isinstance(optimizer, str) and optimizer in DEPRECATED_OPTIMIZER_NAMES:
        factory = f"functools.partial(torch.optim.SGD, lr={lr}, momentum=0.9, weight_decay={weight_decay})"
        warnings.warn(
            f"{who}: `optimizer={optimizer!r}` is deprecated and goes in the next release; `optimizer` takes a "
            f"factory `params -> torch.optim.Optimizer`. HINT: "
            + (
                "leave `optimizer` out (Adam is the default)."
                if optimizer == "adam"
                else f"pass `{factory}`."
            ),
            DeprecationWarning,
            stacklevel=3,
        )
        if optimizer == "adam":
            return None
        return functools.partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(
        f"`optimizer` must be one of: None (the default optimizer) or a callable `params -> "
        f"torch.optim.Optimizer`; got {optimizer!r}. HINT: pass e.g. "
        "`optimizer=lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9)` (in YAML: "
        "`optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.01, momentum: 0.9}}`)."
    )


def labelled_batch(batch: Any, who: str) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` of a training or evaluation batch, read by :func:`~lightning_reuse.nn.split_batch`.

    Raises:
        TypeError: the batch has none of the layouts ``split_batch`` reads.
        ValueError: the batch carries no targets.
    """
    inputs, targets = split_batch(batch, who=who)
    if targets is None:
        raise ValueError(
            f"{who} expects batches (x, y) or {{'x': ..., 'y': ...}}, got a {type(batch).__name__} without "
            "targets. HINT: yield (inputs [N, ...], labels [N]) from the dataloader."
        )
    return inputs, targets


def batch_inputs(batch: Any, who: str) -> Any:
    """The inputs of a batch with or without targets (``predict_step``)."""
    return split_batch(batch, who=who)[0]
