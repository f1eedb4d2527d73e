r"""Fine-tuning capacity (FTC) of additive fine-tuning, with explicit depth-2 and depth-3 constructions.

Sohn, Kwon, An and Lee, "Memorization Capacity for Additive Fine-Tuning with Small ReLU Networks",
UAI 2024 (arXiv 2408.00359): with ``F = f + g``, ``f`` frozen and ``g`` a ReLU network with ``m`` hidden
neurons, the FTC is the smallest ``m`` such that ``g`` can change ANY ``N`` of ``K`` labels while the other
``K - N`` keep ``f``'s outputs. The paper proves ``m = Theta(N)`` for 2-layer and ``Theta(sqrt(N))`` for
3-layer ``g``, independent of ``K``.

Reformulation: ``g`` must interpolate ``t_i = y'_i - f(x_i)`` on the changed points and ``0`` elsewhere, so
``f`` drops out. All constants below are OURS (the paper's are not used), proved by the constructions in
this file, which work for any ``K`` distinct inputs in any dimension (through a projection on a line with
distinct values) and so also bound the worst case (collinear inputs):

* depth 2 (one hidden layer): :func:`depth2_construction` is the linear spline through the data, with a
  knot (one ReLU) where the slope changes; an isolated changed point costs 3 ReLUs (a hat), so
  ``m <= min(3N, K)``. Lower bound (ours, 1-D): a changed point whose two neighbours on each side are
  unchanged forces 3 slope changes in the open interval between its second neighbours; with ``K >= 4N + 1``
  collinear points spaced this way, ``m >= 3N``. So the 1-D worst-case FTC of depth 2 is exactly ``3N``.
* depth 3 (two hidden layers, widths ``(a, b)``): :func:`depth3_construction` splits the changed points into
  ``S`` groups of ``r = ceil(N / S)`` consecutive ones; ``a = 2S - 1`` first-layer ReLUs make each of ``b = 4r``
  second-layer pre-activations affine and independent per group (two knots between groups), and each
  group of 4 second-layer units draws a "W" bump ``A * W(phi)`` with ``W(u) = relu(u) - 2 relu(u-1) +
  2 relu(u-3) - relu(u-4)``, which hits any target in ``[-A, A]`` at one point and is 0 at all others:

  .. math:: m_3(N) = \min_{S \ge 1} \; (2S - 1) + 4 \lceil N / S \rceil \approx 4 \sqrt{2N}.

Example:
    >>> fine_tuning_capacity(16, depth=2), fine_tuning_capacity(16, depth=3), fine_tuning_capacity(256, depth=3)
    (48, 23, 91)
    >>> max_changed(91, depth=3)
    264
    >>> x = torch.linspace(0, 1, 200, dtype=torch.float64)
    >>> t = torch.zeros(200, dtype=torch.float64)
    >>> t[[3, 50, 51, 120]] = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    >>> g = depth3_construction(x, t)
    >>> bool(torch.allclose(g(x[:, None]).squeeze(1), t, atol=1e-8)), ftc_neurons(g)
    (True, 11)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

Bound = Literal["constructive", "lower"]


def _check_count(name: str, value: int, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def _depth3_best_segments(num_changed: int, num_outputs: int = 1) -> tuple[int, int]:
    """``(S, m)`` minimising ``m = 2S - 1 + 4 C ceil(N / S)`` (``S`` <= N; only ``S`` with ``2S-1 < m``)."""
    best = (1, 1 + 4 * num_outputs * num_changed)
    s = 1
    while s <= num_changed and 2 * s - 1 < best[1]:
        m = 2 * s - 1 + 4 * num_outputs * math.ceil(num_changed / s)
        if m < best[1]:
            best = (s, m)
        s += 1
    return best


def fine_tuning_capacity(
    num_changed: int,
    depth: int = 2,
    num_samples: int | None = None,
    bound: Bound = "constructive",
    num_outputs: int = 1,
) -> int:
    """Hidden ReLUs ``m`` of a side network that can change any ``num_changed`` of ``num_samples`` labels.

    Args:
        num_changed: ``N``, labels to change.
        depth: 2 (one hidden layer) or 3 (two hidden layers).
        num_samples: ``K``, samples considered (``None``: unbounded). Must be ``>= N``.
        bound: ``"constructive"`` (an upper bound: our constructions achieve it for every choice of the
            ``N`` points and every target) or ``"lower"`` (depth 2 only: our 1-D worst-case lower bound
            ``3 min(N, floor((K-1)/4))``; the paper's depth-3 ``Omega(sqrt N)`` has no constant we can state).
        num_outputs: ``C``, outputs of ``g`` (e.g. 10 logits; the paper's theorem is for ``C = 1``). Depth 2
            needs no more neurons (the spline's knots are shared: ``min(3N, K)`` for every ``C``, and the
            1-D lower bound holds per output); depth 3 gives each output its own second-layer bumps.

    Returns:
        ``m``: ``min(3N, K)`` (depth 2) or ``min_S 2S - 1 + 4 C ceil(N/S)`` (depth 3); 0 for ``N = 0``.

    >>> fine_tuning_capacity(10, depth=3), fine_tuning_capacity(10, depth=3, num_outputs=10)
    (17, 59)
    """
    _check_count("num_changed", num_changed)
    _check_count("num_outputs", num_outputs, minimum=1)
    if depth not in (2, 3):
        raise ValueError(f"`depth` must be 2 or 3, got {depth!r}.")
    if num_samples is not None:
        _check_count("num_samples", num_samples, minimum=1)
        if num_changed > num_samples:
            raise ValueError(
                f"`num_changed` (N={num_changed}) cannot exceed `num_samples` (K={num_samples}): only the K "
                "samples considered can be relabelled. HINT: N = K is classical memorization."
            )
    if bound not in ("constructive", "lower"):
        raise ValueError(f"`bound` must be 'constructive' or 'lower', got {bound!r}.")
    if bound == "lower":
        if depth != 2:
            raise ValueError(
                "Only depth 2 has a lower bound with a stated constant here; the paper proves "
                "Omega(sqrt(N)) for depth 3 without one. HINT: use bound='constructive'."
            )
        spaced = num_changed if num_samples is None else min(num_changed, (num_samples - 1) // 4)
        return 3 * spaced
    if num_changed == 0:
        return 0
    if depth == 2:
        return 3 * num_changed if num_samples is None else min(3 * num_changed, num_samples)
    return _depth3_best_segments(num_changed, num_outputs)[1]


def ftc_widths(
    num_changed: int, depth: int = 2, num_samples: int | None = None, num_outputs: int = 1
) -> tuple[int, ...]:
    """Hidden widths of our construction for ``N`` changes: ``(m,)`` or ``(2S - 1, 4 C ceil(N/S))``.

    Feed them to a side network: ``SideMLP(d, c, width=ftc_widths(N, 3), depth=3)``.

    >>> ftc_widths(10, 2), ftc_widths(10, 3), sum(ftc_widths(10, 3)) == fine_tuning_capacity(10, 3)
    ((30,), (9, 8), True)
    """
    m = fine_tuning_capacity(num_changed, depth, num_samples, num_outputs=num_outputs)
    if depth == 2 or num_changed == 0:
        return (max(1, m),) * (depth - 1) if num_changed else (1,) * (depth - 1)
    s, _ = _depth3_best_segments(num_changed, num_outputs)
    return (2 * s - 1, 4 * num_outputs * math.ceil(num_changed / s))


def max_changed(
    num_neurons: int, depth: int = 2, num_samples: int | None = None, num_outputs: int = 1
) -> int:
    """Inverse of :func:`fine_tuning_capacity`: the largest ``N`` whose constructive ``m`` fits ``num_neurons``.

    >>> max_changed(10, depth=2), max_changed(10, depth=2, num_samples=8)
    (3, 8)
    """
    _check_count("num_neurons", num_neurons)
    if depth not in (2, 3):
        raise ValueError(f"`depth` must be 2 or 3, got {depth!r}.")
    # m(N) >= 3N (depth 2, K unbounded) and m(N) >= 2 sqrt(8N) - 1 (depth 3, AM-GM) bound the search
    hi = num_neurons // 3 + 1 if depth == 2 else (num_neurons + 1) ** 2 // 32 + 1
    if num_samples is not None:
        hi = num_samples if depth == 2 else min(hi, num_samples)
    lo = 0
    while lo < hi:  # m(N) is non-decreasing in N
        mid = (lo + hi + 1) // 2
        if fine_tuning_capacity(mid, depth, num_samples, num_outputs=num_outputs) <= num_neurons:
            lo = mid
        else:
            hi = mid - 1
    return lo


def project_to_line(x: Tensor, direction: Tensor | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Return ``(u, direction)`` with ``u = x @ direction`` (``x``: ``[K]`` or ``[K, d]``), ``u`` distinct.

    ``direction`` defaults to a seeded random unit vector (distinct inputs project to distinct values with
    probability one). Raises ``ValueError`` if two projections coincide.
    """
    x = x.to(torch.float64)
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2:
        raise ValueError(f"`x` must be [K] or [K, d], got shape {tuple(x.shape)}.")
    if direction is None:
        direction = torch.randn(
            x.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        direction = direction / direction.norm() if x.shape[1] > 1 else direction.abs() / direction.abs()
    direction = direction.to(torch.float64).reshape(-1)
    u = x @ direction
    gaps = u.sort().values.diff()
    if len(gaps) and not gaps.min() > 0:
        raise ValueError(
            "Two inputs project to the same value on the line; the constructions need distinct projections. "
            "HINT: remove duplicate inputs or pass another `direction`."
        )
    return u, direction


def _check_targets(u: Tensor, targets: Tensor) -> Tensor:
    """``targets`` as ``[K, C]`` float64: ``[K]`` is one output, ``[K, C]`` is ``C`` outputs (e.g. logits)."""
    t = targets.to(torch.float64)
    t = t.reshape(-1, 1) if t.dim() <= 1 else t
    if t.dim() != 2 or t.shape[0] != u.shape[0]:
        raise ValueError(
            f"`targets` must have one value per input (K = {u.shape[0]}): [K] or [K, C]; got shape "
            f"{tuple(targets.shape)}. "
            "HINT: one row per input, one column per output."
        )
    return t


def _two_layer(
    direction: Tensor, knots: Tensor, w2: Tensor, b2: Tensor, w3: Tensor | None = None
) -> nn.Sequential:
    """``Linear(d, a) - ReLU - Linear(a, b) [- ReLU - Linear(b, C)]`` in float64, frozen (a fixed construction)."""
    d = direction.shape[0]
    first = nn.Linear(d, len(knots), dtype=torch.float64)
    with torch.no_grad():
        first.weight.copy_(direction.expand(len(knots), d))
        first.bias.copy_(-knots)
    second = nn.Linear(len(knots), w2.shape[0], dtype=torch.float64)
    with torch.no_grad():
        second.weight.copy_(w2)
        second.bias.copy_(b2)
    if w3 is None:
        return nn.Sequential(first, nn.ReLU(), second).requires_grad_(False)
    third = nn.Linear(w2.shape[0], w3.shape[0], dtype=torch.float64)
    with torch.no_grad():
        third.weight.copy_(w3)
        third.bias.zero_()
    return nn.Sequential(first, nn.ReLU(), second, nn.ReLU(), third).requires_grad_(False)


def depth2_construction(x: Tensor, targets: Tensor, direction: Tensor | None = None) -> nn.Sequential:
    """A 2-layer ReLU ``g`` (float64) with ``g(x_i) = targets_i`` exactly, 0 left of the data.

    ``targets`` is ``y' - f(x)`` on changed points and 0 on the others: ``[K]`` (one output) or ``[K, C]``
    (``C`` outputs, e.g. logits). ``g`` is the linear spline through the points (sorted along
    ``direction``) with one ReLU per slope change of any output: at most ``3N`` and at most ``K``, whatever
    ``C`` (the knots are shared; only the output layer is ``C`` wide).
    """
    u, direction = project_to_line(x, direction)
    t = _check_targets(u, targets)
    order = u.argsort()
    us, ts = u[order], t[order]
    first_gap = us.diff().min() if len(us) > 1 else torch.tensor(1.0, dtype=torch.float64)
    us = torch.cat([us[:1] - first_gap, us])  # a virtual unchanged point: g == 0 left of the data
    ts = torch.cat([ts.new_zeros(1, ts.shape[1]), ts])
    slopes = ts.diff(dim=0) / us.diff()[:, None]
    coef = slopes - torch.cat([slopes.new_zeros(1, ts.shape[1]), slopes[:-1]])  # slope change at us[:-1]
    keep = (coef != 0).any(dim=1)
    knots, coef = us[:-1][keep], coef[keep]
    c_out = ts.shape[1]
    if len(knots) == 0:  # nothing to change: one dead unit keeps the shapes valid
        zeros = torch.zeros(c_out, 1, dtype=torch.float64)
        return _two_layer(direction, us[:1] + 1e9, zeros, torch.zeros(c_out, dtype=torch.float64))
    return _two_layer(direction, knots, coef.T.contiguous(), torch.zeros(c_out, dtype=torch.float64))


_W_OFFSETS = (0.0, 1.0, 3.0, 4.0)
_W_WEIGHTS = (1.0, -2.0, 2.0, -1.0)


def depth3_construction(
    x: Tensor, targets: Tensor, num_segments: int | None = None, direction: Tensor | None = None
) -> nn.Sequential:
    """A 3-layer ReLU ``g`` (float64), widths ``(2S - 1, 4 C ceil(N/S))``, with ``g(x_i) = targets_i`` exactly.

    ``targets``: ``[K]`` (one output) or ``[K, C]`` (``C`` outputs); a changed point is one with any
    nonzero target. The first layer (the group knots) is shared by all outputs; each output has its own
    ``4 ceil(N/S)`` second-layer units (its own "W" bumps). ``num_segments`` is ``S`` (default: the
    minimiser of :func:`fine_tuning_capacity`'s depth-3 formula for ``C`` outputs).
    """
    u, direction = project_to_line(x, direction)
    t = _check_targets(u, targets)
    order = u.argsort()
    us, ts = u[order], t[order]
    changed = torch.nonzero((ts != 0).any(dim=1)).flatten()
    n, c_out = len(changed), ts.shape[1]
    if n == 0:
        w2, b2 = torch.zeros(1, 1, dtype=torch.float64), -torch.ones(1, dtype=torch.float64)
        return _two_layer(direction, us[:1] - 1, w2, b2, torch.zeros(c_out, 1, dtype=torch.float64))
    s_best = _depth3_best_segments(n, c_out)[0] if num_segments is None else num_segments
    _check_count("num_segments", s_best, minimum=1)
    s_count = min(s_best, n)
    r = math.ceil(n / s_count)
    groups = [changed[i * r : (i + 1) * r] for i in range(s_count)]
    groups = [g for g in groups if len(g)]
    knot_t = _depth3_knots(us, groups)
    blocks = [_depth3_bumps(us, ts[:, c], groups, knot_t, r) for c in range(c_out)]
    w2 = torch.cat([b[0] for b in blocks])
    b2 = torch.cat([b[1] for b in blocks])
    w3 = torch.block_diag(*[b[2][None, :] for b in blocks])
    return _two_layer(direction, knot_t, w2, b2, w3)


def _depth3_knots(us: Tensor, groups: list[Tensor]) -> Tensor:
    """One knot left of everything, then two in the widest gap between consecutive groups."""
    knots = [us[0] - 1.0]
    for g, g_next in zip(groups[:-1], groups[1:]):
        gaps = us[int(g[-1]) + 1 : int(g_next[0]) + 1] - us[int(g[-1]) : int(g_next[0])]
        i = int(g[-1]) + int(gaps.argmax())  # the widest gap keeps the transition slopes small
        gap = us[i + 1] - us[i]
        knots += [us[i] + gap / 3, us[i] + 2 * gap / 3]
    return torch.stack([torch.as_tensor(k, dtype=torch.float64) for k in knots])


def _depth3_bumps(
    us: Tensor, ts: Tensor, groups: list[Tensor], knot_t: Tensor, r: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Second-layer weights, biases and output weights of one output's ``4r`` "W" bump units."""
    amp = float(ts.abs().max()) or 1.0
    # gaps to the neighbouring data points bound each bump's support
    left = torch.cat([us.new_full((1,), math.inf), us.diff()])
    right = torch.cat([us.diff(), us.new_full((1,), math.inf)])
    w2 = torch.zeros(4 * r, len(knot_t), dtype=torch.float64)
    b2 = torch.zeros(4 * r, dtype=torch.float64)
    for slot in range(r):
        lines = []  # (slope, intercept) of phi_slot on each segment: phi(u) = slope * u + intercept
        for g in groups:
            if slot < len(g):
                i = int(g[slot])
                p, target = us[i], ts[i]
                value = target / amp if target > 0 else 2 - target / amp  # W(value) = target / amp
                slope = 8.0 / torch.minimum(left[i], right[i])  # support of the bump within half a gap
                lines.append((slope, value - slope * p))
            else:
                lines.append((torch.zeros((), dtype=torch.float64), -torch.ones((), dtype=torch.float64)))
        col = torch.zeros(len(knot_t), dtype=torch.float64)
        col[0] = lines[0][0]
        intercept0 = lines[0][0] * knot_t[0] + lines[0][1]  # phi at the first knot
        for j in range(len(groups) - 1):
            k1, k2 = knot_t[1 + 2 * j], knot_t[2 + 2 * j]
            (s1, c1), (s2, c2) = lines[j], lines[j + 1]
            mid = ((s2 * k2 + c2) - (s1 * k1 + c1)) / (k2 - k1)
            col[1 + 2 * j], col[2 + 2 * j] = mid - s1, s2 - mid
        for c, offset in enumerate(_W_OFFSETS):
            w2[4 * slot + c] = col
            b2[4 * slot + c] = intercept0 - offset
    return w2, b2, amp * torch.tensor(_W_WEIGHTS * r, dtype=torch.float64)


def ftc_neurons(g: nn.Module) -> int:
    """Hidden ReLUs of a construction (or any ``Linear``/``ReLU`` stack): all ``Linear`` outputs but the last."""
    linears = [m for m in g.modules() if isinstance(m, nn.Linear)]
    return sum(m.out_features for m in linears[:-1])
