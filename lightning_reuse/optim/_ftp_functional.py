"""The maths of one FTP step (Tian et al., "Fast Trainable Projection for Robust Fine-Tuning", NeurIPS 2023).

Pure torch, no optimizer object. A step is split in two phases so that the radius hyper-gradient uses the
*raw* current gradient, whatever the base optimizer later does with it:

- :func:`ftp_radius_single` / :func:`ftp_radius_foreach` (before the base step): the one-step-delayed
  hyper-gradient ``h = sum(g_t * c_prev / n_prev)``, its annealing by ``k`` when positive, and one Adam
  step on each tensor's radius ``gamma`` (left unclipped; the clip needs this step's row norms).
- :func:`ftp_project_single` / :func:`ftp_project_foreach` (after the base step): displacement
  ``c = p' - p0``, row-wise L1 norms ``n``, the clip ``1e-8 <= gamma <= max(n)``, the projection
  ``p = p0 + clamp(gamma / n, 0, 1) * c`` and the memory of ``c / n`` for the next step.

Per-tensor state: entries of the optimizer's ``state[p]`` (the base optimizer shares that dict, hence the
``ftp_`` prefix; all floating point, dtype of the anchor): ``ftp_anchor`` (``p0``), ``ftp_direction``
(``c / n`` of the previous step, the only element-sized buffer beside the anchor; optionally kept in a
lower precision, ``direction_dtype``: the hyper-gradient is then computed from the rounded values in the
anchor's dtype), ``ftp_gamma``,
``ftp_exp_avg`` and ``ftp_exp_avg_sq`` (0-d tensors). A tensor has them from its first step on. Nothing here reads a tensor's value on the host by design. On CUDA the
foreach and flat paths were checked to run without host synchronisation; the single path synchronised
when last measured (a clamp with a number and a tensor bound was split in two since as the likely cause;
not re-measured).

The ``*_single`` functions are the readable reference, one tensor at a time; the ``*_foreach`` functions do
the same with multi-tensor kernels (``torch._foreach_*``) and agree with them to float rounding.

Example:
    >>> import torch
    >>> p0 = torch.zeros(2, 3)
    >>> state = init_state(p0, anchor=p0)
    >>> state[GAMMA].fill_(0.5)  # doctest: +ELLIPSIS
    tensor(0.5...)
    >>> p = torch.ones(2, 3)  # the base optimizer moved every entry by 1: row norms are 3
    >>> ftp_project_single([p], [state])
    >>> p  # projected back onto the L1 ball of radius 0.5 around the anchor
    tensor([[0.1667, 0.1667, 0.1667],
            [0.1667, 0.1667, 0.1667]])
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

ANCHOR, DIRECTION, GAMMA = "ftp_anchor", "ftp_direction", "ftp_gamma"
EXP_AVG, EXP_AVG_SQ = "ftp_exp_avg", "ftp_exp_avg_sq"
STATE_KEYS = (ANCHOR, DIRECTION, GAMMA, EXP_AVG, EXP_AVG_SQ)

GAMMA_MIN = 1e-8
NORM_EPS = 1e-8
RADIUS_BETAS = (0.9, 0.999)
RADIUS_EPS = 1e-8

State = dict[str, Any]


class ProjectedGroup(NamedTuple):
    """The projected parameters of one param group, their ``state[p]`` dicts and the group's FTP values.

    ``t`` is the group's step counter (``ftp_step``, already advanced for this step), ``k`` and ``mu`` its
    ``ftp_k`` and ``ftp_mu``. Parameters without a gradient this step are included (the paths skip them).
    """

    params: list[Tensor]
    states: list[State]
    t: int
    k: float
    mu: float


def row_l1_norm(c: Tensor) -> Tensor:
    """Row-wise L1 norm of ``c`` plus ``1e-8``: ``sum(|c|)`` over every dim but 0, kept as size-1 dims.

    A 0-D or 1-D tensor is a single row (its whole L1 norm), exactly as the reference's ``sum(dim=())``.

    >>> row_l1_norm(torch.tensor([[1.0, -2.0], [0.0, 3.0]])).flatten().tolist()
    [3.00000001, 3.00000001]
    >>> row_l1_norm(torch.tensor([1.0, -2.0])).shape
    torch.Size([1])
    """
    return _row_l1(c) + NORM_EPS


def _row_l1(c: Tensor) -> Tensor:
    if c.dim() <= 1:  # one row: the whole vector (shape [1]) or the scalar (shape [])
        return torch.linalg.vector_norm(c, ord=1).reshape([1] * c.dim())
    return torch.linalg.vector_norm(c, ord=1, dim=tuple(range(1, c.dim())), keepdim=True)


def init_state(param: Tensor, anchor: Tensor) -> State:
    """Fresh FTP state for ``param`` anchored at ``anchor`` (radius 1e-8: its first step snaps back).

    Created at the tensor's first step, after the base step (``ftp_direction`` follows in the projection).
    """
    dtype = anchor.dtype
    zero = torch.zeros((), dtype=dtype, device=param.device)
    return {
        ANCHOR: anchor.detach().to(device=param.device, dtype=dtype, copy=True),
        GAMMA: torch.full((), GAMMA_MIN, dtype=dtype, device=param.device),
        EXP_AVG: zero.clone(),
        EXP_AVG_SQ: zero.clone(),
    }


def _bias_corrections(t: int) -> tuple[float, float]:
    return 1.0 - RADIUS_BETAS[0] ** t, 1.0 - RADIUS_BETAS[1] ** t


def ftp_radius_single(grads: list[Tensor], states: list[State], *, t: int, k: float, mu: float) -> None:
    """Update each radius from the raw gradient ``g_t`` (spec step 4, ``t >= 2``; states need ``direction``).

    ``h = sum(g_t * c_prev / n_prev)``; ``h <- k h`` if ``h > 0``; Adam with betas (0.9, 0.999), eps 1e-8 and
    step size ``mu`` on ``gamma`` (the clip to ``[1e-8, max(n)]`` follows in the projection).
    """
    bc1, bc2 = _bias_corrections(t)
    b1, b2 = RADIUS_BETAS
    for g, s in zip(grads, states):
        dtype = s[ANCHOR].dtype  # the state's precision, also for a low-precision stored direction
        h = torch.sum(g.to(dtype) * s[DIRECTION].to(dtype))
        h = torch.where(h > 0, h * k, h)
        s[EXP_AVG].mul_(b1).add_(h, alpha=1 - b1)
        s[EXP_AVG_SQ].mul_(b2).add_(h * h, alpha=1 - b2)
        step = (s[EXP_AVG] / bc1) / (torch.sqrt(s[EXP_AVG_SQ] / bc2) + RADIUS_EPS)
        s[GAMMA].sub_(mu * step)


def _stored(d: Tensor, direction_dtype: torch.dtype | None) -> Tensor:
    """The direction as kept for the next step: in the state's dtype, or rounded to ``direction_dtype``."""
    return d if direction_dtype is None else d.to(direction_dtype)


def ftp_project_single(
    params: list[Tensor], states: list[State], direction_dtype: torch.dtype | None = None
) -> None:
    """Project each ``param`` (already updated by the base optimizer) onto its L1 ball (spec steps 2-6).

    ``direction_dtype``: keep ``c / n`` for the next step's hyper-gradient in this dtype (e.g.
    ``torch.bfloat16``); ``None`` keeps the state's dtype.
    """
    for p, s in zip(params, states):
        anchor = s[ANCHOR]
        c = p.to(anchor.dtype) - anchor
        n = row_l1_norm(c)
        gamma = s[GAMMA]
        gamma.clamp_(
            min=GAMMA_MIN
        )  # two ops: a number and a tensor bound in one clamp may copy to the device
        torch.minimum(gamma, n.max(), out=gamma)
        scale = torch.clamp(gamma / n, 0.0, 1.0)
        if p.dtype == anchor.dtype:  # p0 + scale c == p' + (scale - 1) c: in place, exact where scale is 1
            p.addcmul_(c, scale - 1.0)
        else:  # low-precision parameter: from the fp32 anchor, then one rounding
            p.copy_(anchor + scale * c)
        s[DIRECTION] = _stored(c * (1.0 / n), direction_dtype)


def ftp_radius_foreach(grads: list[Tensor], states: list[State], *, t: int, k: float, mu: float) -> None:
    """Multi-tensor :func:`ftp_radius_single`: one dot product per tensor, the rest in ``_foreach`` kernels."""
    if not grads:
        return
    h = []
    for g, s in zip(grads, states):
        dtype = s[ANCHOR].dtype
        h.append(torch.dot(g.reshape(-1).to(dtype), s[DIRECTION].reshape(-1).to(dtype)))
    radius_adam_foreach(h, states, t=t, k=k, mu=mu)


def radius_adam_foreach(h: list[Tensor], states: list[State], *, t: int, k: float, mu: float) -> None:
    """The radius Adam of :func:`ftp_radius_foreach` from given hyper-gradients ``h`` (0-D, one per state)."""
    if not h:
        return
    bc1, bc2 = _bias_corrections(t)
    b1, b2 = RADIUS_BETAS
    if k != 1.0:  # h <- k h where h > 0, i.e. min(h, 0) + k max(h, 0)
        h_pos = torch._foreach_clamp_min(h, 0.0)
        h = torch._foreach_clamp_max(h, 0.0)
        torch._foreach_add_(h, h_pos, alpha=k)
    m = [s[EXP_AVG] for s in states]
    v = [s[EXP_AVG_SQ] for s in states]
    gamma = [s[GAMMA] for s in states]
    torch._foreach_lerp_(m, h, 1 - b1)
    torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, h, h, value=1 - b2)
    denom = torch._foreach_div(v, bc2)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, RADIUS_EPS)
    torch._foreach_addcdiv_(gamma, m, denom, value=-mu / bc1)


def ftp_project_foreach(
    params: list[Tensor], states: list[State], direction_dtype: torch.dtype | None = None
) -> None:
    """Multi-tensor :func:`ftp_project_single`: one row-norm kernel per tensor, the rest in ``_foreach`` kernels."""
    if not params:
        return
    anchors = [s[ANCHOR] for s in states]
    gamma = [s[GAMMA] for s in states]
    same_dtype = all(p.dtype == a.dtype for p, a in zip(params, anchors))
    src = params if same_dtype else [p.to(a.dtype) for p, a in zip(params, anchors)]
    c = torch._foreach_sub(src, anchors)
    n = [_row_l1(x) for x in c]
    torch._foreach_add_(n, NORM_EPS)
    torch._foreach_clamp_min_(gamma, GAMMA_MIN)
    torch._foreach_minimum_(gamma, torch._foreach_max(n))
    inv_n = torch._foreach_reciprocal(n)
    scale = torch._foreach_mul(inv_n, gamma)
    torch._foreach_clamp_max_(scale, 1.0)  # gamma, n > 0, so the lower clamp at 0 is a no-op
    if same_dtype:  # p0 + scale c == p' + (scale - 1) c: in place, exact where scale is 1
        torch._foreach_sub_(scale, 1.0)
        torch._foreach_addcmul_(params, c, scale)
    else:
        torch._foreach_copy_(params, torch._foreach_addcmul(anchors, c, scale))
    torch._foreach_mul_(c, inv_n)
    for s, d in zip(states, c):
        s[DIRECTION] = _stored(d, direction_dtype)


class FlatLayout:
    """Segment lengths of a fixed list of tensors laid end to end (built once per set, kept on the device).

    ``tensor_lengths[i]`` = numel of tensor i; ``rows[i]`` = its rows (dim 0, or 1 for 0-D/1-D);
    ``row_lengths`` = the length of every row of every tensor, in order.
    """

    def __init__(self, tensors: list[Tensor], device: torch.device) -> None:
        self.shapes = [t.shape for t in tensors]
        self.sizes = [t.numel() for t in tensors]
        self.rows = [t.shape[0] if t.dim() >= 2 else 1 for t in tensors]
        self.numel, self.n_rows = sum(self.sizes), sum(self.rows)
        row_lengths = [size // rows for size, rows in zip(self.sizes, self.rows) for _ in range(rows)]
        self.tensor_lengths = torch.tensor(self.sizes, dtype=torch.long, device=device)
        self.rows_per_tensor = torch.tensor(self.rows, dtype=torch.long, device=device)
        self.row_lengths = torch.tensor(row_lengths, dtype=torch.long, device=device)

    def cat(self, tensors: list[Tensor], dtype: torch.dtype) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors]).to(dtype)

    def split(self, flat: Tensor) -> list[Tensor]:
        return [x.view(shape) for x, shape in zip(flat.split(self.sizes), self.shapes)]


def _segment(data: Tensor, reduce: str, lengths: Tensor) -> Tensor:
    return torch.segment_reduce(data, reduce, lengths=lengths, unsafe=True)


def ftp_radius_flat(
    grads: list[Tensor], states: list[State], layout: FlatLayout, *, t: int, k: float, mu: float
) -> None:
    """:func:`ftp_radius_single` on the concatenation of all tensors: a fixed number of kernels."""
    if not grads:
        return
    bc1, bc2 = _bias_corrections(t)
    b1, b2 = RADIUS_BETAS
    dtype = states[0][ANCHOR].dtype
    prod = layout.cat(grads, dtype).mul_(layout.cat([s[DIRECTION] for s in states], dtype))
    h = _segment(prod, "sum", layout.tensor_lengths)
    if k != 1.0:
        h = torch.where(h > 0, h * k, h)
    m = torch.stack([s[EXP_AVG] for s in states]).mul_(b1).add_(h, alpha=1 - b1)
    v = torch.stack([s[EXP_AVG_SQ] for s in states]).mul_(b2).addcmul_(h, h, value=1 - b2)
    gamma = torch.stack([s[GAMMA] for s in states])
    gamma.sub_(mu * (m / bc1) / (torch.sqrt(v / bc2) + RADIUS_EPS))
    for key, value in ((EXP_AVG, m), (EXP_AVG_SQ, v), (GAMMA, gamma)):
        torch._foreach_copy_([s[key] for s in states], list(value.unbind(0)))


def ftp_project_flat(
    params: list[Tensor], states: list[State], layout: FlatLayout, direction_dtype: torch.dtype | None = None
) -> None:
    """:func:`ftp_project_single` on the concatenation of all tensors (segment reductions for the rows)."""
    if not params:
        return
    dtype = states[0][ANCHOR].dtype
    anchors = layout.cat([s[ANCHOR] for s in states], dtype)
    c = layout.cat(params, dtype).sub_(anchors)
    n = _segment(c.abs(), "sum", layout.row_lengths).add_(NORM_EPS)
    max_n = _segment(n, "max", layout.rows_per_tensor)
    gamma = torch.stack([s[GAMMA] for s in states]).clamp_(min=GAMMA_MIN)
    gamma = torch.minimum(gamma, max_n)
    torch._foreach_copy_([s[GAMMA] for s in states], list(gamma.unbind(0)))
    inv_n = torch.reciprocal(n)
    gamma_rows = torch.repeat_interleave(gamma, layout.rows_per_tensor, output_size=layout.n_rows)
    scale = (gamma_rows * inv_n).clamp_(max=1.0)
    scale_el = torch.repeat_interleave(scale, layout.row_lengths, output_size=layout.numel)
    new = torch.addcmul(anchors, scale_el, c)
    torch._foreach_copy_(params, layout.split(new))
    inv_el = torch.repeat_interleave(inv_n, layout.row_lengths, output_size=layout.numel)
    for s, d in zip(states, layout.split(c.mul_(inv_el))):
        s[DIRECTION] = _stored(d, direction_dtype)
