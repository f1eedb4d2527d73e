"""L2-SP: an L2 penalty towards the pre-trained weights (Li, Grandvalet, Davoine, ICML 2018).

.. math::
    \\Omega(w) = \\frac{\\alpha}{2} \\lVert w_S - w_S^0 \\rVert_2^2 + \\frac{\\beta}{2} \\lVert w_{\\bar S} \\rVert_2^2

where :math:`w_S` are the parameters with a pre-trained counterpart :math:`w_S^0` and :math:`w_{\\bar S}`
the new ones (the head). Add the penalty to the training loss; it shares FTP's anchor machinery.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential()
    >>> model.add_module("body", torch.nn.Linear(2, 2))
    >>> model.add_module("head", torch.nn.Linear(2, 1))
    >>> reg = L2SP(model, alpha=0.1, beta=0.0, exclude="head")
    >>> float(reg().detach())  # at the anchors
    0.0
    >>> with torch.no_grad():
    ...     _ = model.body.weight.add_(1.0)
    >>> round(float(reg().detach()), 6)  # 0.1 / 2 * 4 entries * 1^2
    0.2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_reuse.optim.anchors import (
    AnchorSpec,
    ExcludeSpec,
    anchor_dtype,
    collect_anchors,
    parameter_names,
    resolve_exclude,
)

__all__ = ["L2SP", "l2sp_penalty"]


def l2sp_penalty(
    params: Sequence[Tensor],
    anchors: Sequence[Tensor],
    alpha: float,
    new_params: Sequence[Tensor] = (),
    beta: float = 0.0,
) -> Tensor:
    """``alpha/2 * sum ||w - w0||^2 + beta/2 * sum ||w_new||^2`` (differentiable in the parameters).

    Each parameter is compared in its anchor's dtype; the sum is fp32, or wider when an anchor or a new
    parameter is (fp64 stays fp64; bf16/fp16 parameters are summed in fp32).

    >>> import torch
    >>> float(l2sp_penalty([torch.ones(3)], [torch.zeros(3)], alpha=2.0))
    3.0
    """
    if len(params) != len(anchors):
        raise ValueError(f"`params` and `anchors` must pair up; got {len(params)} and {len(anchors)}.")
    ref = params[0] if params else (new_params[0] if new_params else torch.zeros(()))
    dtype = torch.float32
    for t in (*anchors, *new_params):
        dtype = torch.promote_types(dtype, t.dtype)
    total = torch.zeros((), dtype=dtype, device=ref.device)
    if params and alpha:
        diffs = torch._foreach_sub([p.to(a.dtype) for p, a in zip(params, anchors)], list(anchors))
        total = total + 0.5 * alpha * sum(d.pow(2).sum() for d in diffs)
    if new_params and beta:
        total = total + 0.5 * beta * sum(p.to(anchor_dtype(p)).pow(2).sum() for p in new_params)
    return total


class L2SP:
    """The L2-SP regulariser of a model: call it to get the penalty, add it to the loss.

    Args:
        model: the model being fine-tuned.
        alpha: strength of the pull towards the pre-trained weights (the paper sweeps 1e-3 ... 1e-1).
        beta: weight decay on the excluded (new) parameters.
        exclude: the new parameters (same forms as :class:`~lightning_reuse.optim.FTP`'s ``exclude``).
        anchors: pre-trained values: None (the model's current values), a module or a state_dict.
    """

    def __init__(
        self,
        model: nn.Module,
        alpha: float = 1e-2,
        beta: float = 0.0,
        exclude: ExcludeSpec = "head",
        anchors: AnchorSpec = None,
    ) -> None:
        if alpha < 0 or beta < 0:
            raise ValueError(f"`alpha` and `beta` must be >= 0, got alpha={alpha}, beta={beta}.")
        self.alpha, self.beta = float(alpha), float(beta)
        params = [p for p in model.parameters() if p.requires_grad]
        names = parameter_names(params, model=model)
        excluded = resolve_exclude(exclude, params, names)
        self.params = [p for p in params if p not in excluded]
        self.new_params = [p for p in params if p in excluded]
        found = collect_anchors(self.params, anchors, names)
        self.anchors = [found[id(p)] for p in self.params]

    def __call__(self) -> Tensor:
        """The penalty at the current parameter values."""
        return l2sp_penalty(self.params, self.anchors, self.alpha, self.new_params, self.beta)

    @torch.no_grad()
    def distance(self) -> float:
        """``||w_S - w_S^0||_2`` (a diagnostic: how far fine-tuning went)."""
        return float(sum((p.to(a.dtype) - a).pow(2).sum() for p, a in zip(self.params, self.anchors)) ** 0.5)

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "anchors": [a.clone() for a in self.anchors]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["anchors"]) != len(self.anchors):
            raise ValueError(
                f"`state` holds {len(state['anchors'])} anchors, this L2SP has {len(self.anchors)}. "
                "HINT: load the state of an L2SP built on the same model and `exclude`."
            )
        self.alpha, self.beta = float(state["alpha"]), float(state["beta"])
        self.anchors = [a.to(device=p.device, copy=True) for a, p in zip(state["anchors"], self.params)]
