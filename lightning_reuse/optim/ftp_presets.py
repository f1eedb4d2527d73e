"""FTP in the usual ``(params, lr, ...)`` optimizer form, and a one-line ``configure_optimizers`` helper.

:class:`FTPAdamW` and :class:`FTPSGD` take the same arguments as ``torch.optim.AdamW`` / ``torch.optim.SGD``
plus FTP's ``k``, ``mu``, ``exclude`` and ``implementation``, so a LightningCLI recipe can name them by
class path. Name rules in ``exclude`` need parameter names: pass ``model.named_parameters()`` (LightningCLI's
``OptimizerCallable`` injection does, see ``docs/ftp.md``), or exclude nothing.

``implementation`` chooses FTP's path (see :class:`FTP`); the base optimizer's own kernels are chosen by
``adamw_foreach`` / ``adamw_fused`` and ``sgd_foreach`` / ``sgd_fused`` (torch's ``foreach=`` and ``fused=``,
a different thing).

Defaults are the paper's (Tian et al., NeurIPS 2023, and the authors' AdamP code): weight decay 0 for both
presets and for ``configure_ftp`` with AdamW (torch's own AdamW default is 1e-2; pass ``weight_decay=`` to
change it), ``k = 1``, ``mu = 1e-2``; :class:`FTPSGD` uses the paper's SGD (lr 1e-2, Nesterov momentum 0.9);
:class:`FTPAdamW` keeps AdamW's lr 1e-3, betas (0.9, 0.999) and eps 1e-8.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential()
    >>> model.add_module("body", torch.nn.Linear(4, 4))
    >>> model.add_module("head", torch.nn.Linear(4, 2))
    >>> opt = configure_ftp(model, torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True)  # head excluded
    >>> opt.is_projected(model.body.weight), opt.is_projected(model.head.weight)
    (True, False)
    >>> opt = FTPAdamW(model.named_parameters(), lr=1e-4, exclude="head")
    >>> type(opt.base_optimizer).__name__
    'AdamW'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Union

import torch
from torch import nn
from torch.optim import Optimizer

from lightning_reuse.optim.anchors import AnchorSpec, ExcludeSpec
from lightning_reuse.optim.ftp import FTP, Implementation

__all__ = ["FTPAdamW", "FTPSGD", "configure_ftp"]

Params = Union[Iterable[Any], Iterable[dict[str, Any]]]

_PAPER_WEIGHT_DECAY = 0.0
"""The paper's weight decay (Tian et al. 2023; the authors' AdamP): the default of every preset here."""


def _is_adamw(optimizer: Callable[..., Optimizer]) -> bool:
    """Whether ``optimizer`` builds a ``torch.optim.AdamW`` (the class or a subclass)."""
    return isinstance(optimizer, type) and issubclass(optimizer, torch.optim.AdamW)


class FTPAdamW(FTP):
    """FTP over ``torch.optim.AdamW``; arguments as AdamW's, then FTP's (see :class:`FTP`).

    ``weight_decay`` defaults to the paper's 0 (torch's AdamW default is 1e-2).

    ``adamw_foreach`` / ``adamw_fused`` are AdamW's ``foreach=`` / ``fused=`` (torch's kernels for the base
    update); ``implementation`` is FTP's (its projection path). On CUDA, ``adamw_fused=True`` lets the fused
    path run AdamW and the projection in one Triton kernel (the fastest step, docs/ftp.md).
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        k: float = 1.0,
        mu: float = 1e-2,
        exclude: str | list[str] | None = None,
        implementation: Implementation = "auto",
        adamw_foreach: bool | None = None,
        adamw_fused: bool | None = None,
    ) -> None:
        base = torch.optim.AdamW(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            foreach=adamw_foreach,
            fused=adamw_fused,
        )
        super().__init__(base, k=k, mu=mu, exclude=exclude, implementation=implementation)


class FTPSGD(FTP):
    """FTP over ``torch.optim.SGD``; arguments as SGD's, then FTP's (the paper: lr 1e-2, Nesterov 0.9).

    ``sgd_foreach`` / ``sgd_fused`` are SGD's ``foreach=`` / ``fused=`` (torch's kernels for the base
    update); ``implementation`` is FTP's (its projection path).
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        momentum: float = 0.9,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        *,
        k: float = 1.0,
        mu: float = 1e-2,
        exclude: str | list[str] | None = None,
        implementation: Implementation = "auto",
        sgd_foreach: bool | None = None,
        sgd_fused: bool | None = None,
    ) -> None:
        base = torch.optim.SGD(
            params,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            foreach=sgd_foreach,
            fused=sgd_fused,
        )
        super().__init__(base, k=k, mu=mu, exclude=exclude, implementation=implementation)


def configure_ftp(
    model: nn.Module,
    optimizer: Callable[..., Optimizer] = torch.optim.AdamW,
    *,
    exclude: ExcludeSpec = "head",
    k: float = 1.0,
    mu: float = 1e-2,
    anchors: AnchorSpec = None,
    implementation: Implementation = "auto",
    **optimizer_kwargs: Any,
) -> FTP:
    """Build ``optimizer(trainable params of model, **optimizer_kwargs)`` wrapped in FTP, the head excluded.

    For ``LightningModule.configure_optimizers``: ``return configure_ftp(self, torch.optim.SGD, lr=1e-2)``.
    ``exclude`` defaults to the module named ``head``; pass the name of yours (e.g. ``"classifier"``,
    ``"fc"``) or ``None``. Frozen parameters (``requires_grad=False``) are left out of the optimizer.
    ``implementation`` is FTP's path (see :class:`FTP`); ``optimizer_kwargs`` go to the base optimizer
    (there ``foreach=`` / ``fused=`` are torch's kernels for the base update). With an AdamW base and no
    ``weight_decay`` given, weight decay is the paper's 0 (not torch's AdamW default 1e-2).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            "`model` has no trainable parameter (every `requires_grad` is False). HINT: unfreeze what "
            "should be fine-tuned before calling `configure_ftp`."
        )
    if _is_adamw(optimizer) and "weight_decay" not in optimizer_kwargs:
        optimizer_kwargs["weight_decay"] = _PAPER_WEIGHT_DECAY
    base = optimizer(params, **optimizer_kwargs)
    return FTP(base, k=k, mu=mu, exclude=exclude, anchors=anchors, model=model, implementation=implementation)
