"""Fine-tuning capacity: formulas against brute force, constructions fit exactly with the stated m."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_reuse.functional.ftc import (
    depth2_construction,
    depth3_construction,
    fine_tuning_capacity,
    ftc_neurons,
    ftc_widths,
    max_changed,
    project_to_line,
)


def instance(k: int, n: int, seed: int, dim: int = 1, grid: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """K collinear inputs in R^dim (a grid or random positions on a line), N random nonzero targets."""
    g = torch.Generator().manual_seed(seed)
    pos = (
        torch.linspace(0, 1, k, dtype=torch.float64)
        if grid
        else torch.rand(k, generator=g, dtype=torch.float64)
    )
    direction = torch.randn(dim, generator=g, dtype=torch.float64)
    x = pos[:, None] * direction / direction.norm()
    t = torch.zeros(k, dtype=torch.float64)
    idx = torch.randperm(k, generator=g)[:n]
    t[idx] = torch.randn(n, generator=g, dtype=torch.float64).sign() * (0.5 + torch.rand(n, generator=g))
    return x, t


def fits(net: nn.Module, x: torch.Tensor, t: torch.Tensor, rtol: float = 1e-6) -> bool:
    out = net(x[:, None] if x.dim() == 1 else x).squeeze(1)
    return bool((out - t).abs().max() <= rtol * max(1.0, float(t.abs().max())))


def reference_depth3(n: int) -> int:
    """Brute force over every segment count S = 1..N (no early stop)."""
    return min(2 * s - 1 + 4 * math.ceil(n / s) for s in range(1, n + 1)) if n else 0


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 7, 16, 50, 255, 256, 1000])
def test_capacity_formulas_against_brute_force(n: int) -> None:
    assert fine_tuning_capacity(n, depth=3) == reference_depth3(n)
    assert fine_tuning_capacity(n, depth=2) == 3 * n
    assert fine_tuning_capacity(n, depth=2, num_samples=max(n, 1) + 5) == min(3 * n, n + 5)
    assert fine_tuning_capacity(n, depth=2, bound="lower") == 3 * n
    assert fine_tuning_capacity(n, depth=2, num_samples=4 * n + 1, bound="lower") == 3 * n


def test_capacity_scaling_is_linear_and_square_root() -> None:
    ns = np.array([16, 64, 256, 1024, 4096])
    m2 = [fine_tuning_capacity(int(n), 2) for n in ns]
    m3 = [fine_tuning_capacity(int(n), 3) for n in ns]
    slope2 = np.polyfit(np.log(ns), np.log(m2), 1)[0]
    slope3 = np.polyfit(np.log(ns), np.log(m3), 1)[0]
    assert slope2 == pytest.approx(1.0, abs=1e-9)
    assert slope3 == pytest.approx(0.5, abs=0.03)
    assert all(4 * math.sqrt(2 * n) - 1 <= m <= 4 * math.sqrt(2 * n) + 7 for n, m in zip(ns, m3))


@pytest.mark.parametrize("depth", [2, 3])
def test_max_changed_inverts_the_capacity(depth: int) -> None:
    for m in range(0, 120):
        n = max_changed(m, depth)
        assert fine_tuning_capacity(n, depth) <= m < fine_tuning_capacity(n + 1, depth)
    assert max_changed(1000, depth, num_samples=10) == 10


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: fine_tuning_capacity(5, 2, num_samples=4), "cannot exceed `num_samples`"),
        (lambda: fine_tuning_capacity(-1, 2), "`num_changed` must be an integer >= 0"),
        (lambda: fine_tuning_capacity(4, 4), "`depth` must be 2 or 3"),
        (lambda: fine_tuning_capacity(4, 3, bound="lower"), "Only depth 2 has a lower bound"),
        (lambda: fine_tuning_capacity(4, 2, bound="tight"), "`bound` must be"),
        (lambda: max_changed(-2), "`num_neurons` must be an integer >= 0"),
        (lambda: project_to_line(torch.tensor([0.0, 1.0, 1.0])), "project to the same value"),
        (lambda: depth2_construction(torch.arange(4.0), torch.zeros(3)), "one value per input"),
        (lambda: depth3_construction(torch.arange(4.0), torch.ones(4), num_segments=0), "num_segments"),
    ],
)
def test_bad_inputs(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_depth2_is_the_linear_spline_between_the_points() -> None:
    x, t = instance(40, 9, seed=3, grid=False)
    net = depth2_construction(x[:, 0], t)  # 1-D input
    u = x[:, 0].numpy()
    order = np.argsort(u)
    queries = np.linspace(u.min(), u.max(), 997)
    reference = np.interp(queries, u[order], t.numpy()[order])  # obviously-correct piecewise-linear
    out = net(torch.as_tensor(queries)[:, None]).squeeze(1).detach().numpy()
    np.testing.assert_allclose(out, reference, atol=1e-9)
    left = net(torch.tensor([[u.min() - 5.0]], dtype=torch.float64))
    assert float(left) == 0.0  # nothing changes left of the data


@pytest.mark.parametrize("k", [16, 128, 512])
@pytest.mark.parametrize("n_fraction", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("grid", [True, False])
def test_constructions_fit_exactly_within_the_stated_m(k: int, n_fraction: float, grid: bool) -> None:
    n = max(1, int(n_fraction * k))
    x, t = instance(k, n, seed=k + n, dim=3, grid=grid)
    _, direction = project_to_line(x, seed=1)
    for depth, build in ((2, depth2_construction), (3, depth3_construction)):
        net = build(x, t, direction=direction)
        assert fits(net, x, t), (depth, k, n)
        assert ftc_neurons(net) <= fine_tuning_capacity(n, depth, num_samples=k)


def test_depth3_neurons_do_not_grow_with_k() -> None:
    counts = set()
    for k in (64, 256, 2048):
        x, t = instance(k, 20, seed=k)
        net = depth3_construction(x, t)
        assert fits(net, x, t)
        counts.add(ftc_neurons(net))
    assert counts == {fine_tuning_capacity(20, 3)}


def test_depth2_construction_uses_three_neurons_per_spaced_change_as_the_lower_bound_formula() -> None:
    # Checks the construction's count against the formula; it does not show that fewer neurons cannot fit.
    n = 12
    k = 4 * n + 1
    x = torch.linspace(-1, 1, k, dtype=torch.float64)
    t = torch.zeros(k, dtype=torch.float64)
    t[2::4] = torch.linspace(-2, 2, n, dtype=torch.float64) + 0.1  # isolated, two unchanged each side
    net = depth2_construction(x, t)
    assert fits(net, x, t)
    assert ftc_neurons(net) == 3 * n == fine_tuning_capacity(n, 2, num_samples=k, bound="lower")


def _interpolable_with_breakpoints(x: list[float], t: list[float], m: int) -> bool:
    """Whether some ``c0 + c1 x + sum_{j<m} a_j relu(x - b_j)`` passes exactly through the sorted points ``(x, t)``.

    This class contains every one-hidden-layer ReLU network on 1-D inputs with ``m`` hidden neurons (a neuron
    ``a relu(w x + b)`` with ``w < 0`` is ``relu(x - beta)`` up to an affine term; ``w = 0`` is a constant).
    Exact search: one linear feasibility program per placement of each ``b_j`` in a closed gap of the data
    and sign of ``a_j``; with ``d_j = a_j b_j`` the equations are linear and ``b_j`` in ``[lo, hi]`` becomes
    ``a_j lo <= d_j <= a_j hi`` (reversed for ``a_j <= 0``).
    """
    from itertools import product

    from scipy.optimize import linprog

    k, n = len(x), 2 + 2 * m
    for gaps, signs in product(product(range(k + 1), repeat=m), product((1.0, -1.0), repeat=m)):
        a_eq = [[1.0, xi] + [0.0] * (2 * m) for xi in x]
        a_ub: list[list[float]] = []
        bounds: list[tuple[float | None, float | None]] = [(None, None), (None, None)]
        for j, (g, s) in enumerate(zip(gaps, signs)):
            for i in range(g, k):  # b_j <= x_i: relu(x_i - b_j) = x_i - b_j
                a_eq[i][2 + 2 * j], a_eq[i][3 + 2 * j] = x[i], -1.0
            lo, hi = (x[g - 1] if g > 0 else None), (x[g] if g < k else None)
            low, high = (lo, hi) if s > 0 else (hi, lo)
            for bound, sign in ((low, 1.0), (high, -1.0)):  # sign * (bound * a_j - d_j) <= 0
                if bound is not None:
                    row = [0.0] * n
                    row[2 + 2 * j], row[3 + 2 * j] = sign * bound, -sign
                    a_ub.append(row)
            bounds += [(0.0, None) if s > 0 else (None, 0.0), (None, None)]
        res = linprog([0.0] * n, A_ub=a_ub or None, b_ub=[0.0] * len(a_ub) or None, A_eq=a_eq, b_eq=t,
                      bounds=bounds, method="highs")  # fmt: skip
        if res.status == 0:
            return True
    return False


def test_depth2_one_isolated_change_cannot_be_fit_with_fewer_than_three_neurons() -> None:
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    t = torch.zeros(5, dtype=torch.float64)
    t[2] = 1.5  # one change, two unchanged points on each side
    assert not _interpolable_with_breakpoints(x.tolist(), t.tolist(), 2)  # no 2-neuron network fits
    assert _interpolable_with_breakpoints(x.tolist(), t.tolist(), 3)
    # the search itself: a step needs exactly two breakpoints, a line none
    assert _interpolable_with_breakpoints(x.tolist(), [0.0, 0.0, 1.0, 1.0, 1.0], 2)
    assert not _interpolable_with_breakpoints(x.tolist(), [0.0, 0.0, 1.0, 1.0, 1.0], 1)
    assert _interpolable_with_breakpoints(x.tolist(), [0.0, 1.0, 2.0, 3.0, 4.0], 0)
    net = depth2_construction(x, t)
    assert fits(net, x, t)
    assert ftc_neurons(net) == 3 == fine_tuning_capacity(1, 2, num_samples=5, bound="lower")


def test_additive_fine_tuning_changes_only_the_chosen_labels() -> None:
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1)).double()  # "pre-trained", frozen
    x, _ = instance(300, 0, seed=5, dim=2, grid=False)
    y = f(x).squeeze(1).detach()
    changed = torch.tensor([7, 8, 100, 250])
    y_new = y.clone()
    y_new[changed] = torch.tensor([3.0, -1.0, 0.25, 9.0], dtype=torch.float64)
    for build in (depth2_construction, depth3_construction):
        g = build(x, y_new - y)
        out = (f(x) + g(x)).squeeze(1)
        assert torch.allclose(out[changed], y_new[changed], atol=1e-8)
        keep = torch.ones(300, dtype=torch.bool)
        keep[changed] = False
        assert torch.allclose(out[keep], y[keep], atol=1e-8)


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 48),
    data=st.data(),
)
def test_property_any_subset_any_targets(k: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(0, k))
    idx = data.draw(st.permutations(range(k)))[:n]
    values = data.draw(st.lists(st.floats(-5, 5).filter(lambda v: abs(v) > 1e-3), min_size=n, max_size=n))
    x = torch.linspace(0, 3, k, dtype=torch.float64)
    t = torch.zeros(k, dtype=torch.float64)
    if n:
        t[list(idx)] = torch.tensor(values, dtype=torch.float64)
    for depth, build in ((2, depth2_construction), (3, depth3_construction)):
        net = build(x, t)
        assert fits(net, x[:, None], t)
        if n:
            assert ftc_neurons(net) <= fine_tuning_capacity(n, depth, num_samples=k)


@pytest.mark.parametrize("n", [1, 5, 20, 100])
def test_widths_match_the_construction(n: int) -> None:
    x, t = instance(4 * n + 1, n, seed=n)
    net = depth3_construction(x, t)
    widths = tuple(m.out_features for m in net if isinstance(m, nn.Linear))[:-1]
    assert widths == ftc_widths(n, 3) and sum(widths) == fine_tuning_capacity(n, 3)
    assert ftc_widths(n, 2) == (3 * n,)


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize(
    ("num_samples", "num_changed", "num_outputs"), [(60, 7, 10), (40, 12, 3), (30, 1, 2)]
)
def test_constructions_with_several_outputs_change_only_the_chosen_points(
    depth: int, num_samples: int, num_changed: int, num_outputs: int
) -> None:
    """C outputs (logits): exact on every point, and exactly the formula's neurons (reference: the targets)."""
    g = torch.Generator().manual_seed(num_samples + num_changed)
    x = torch.randn(num_samples, 5, generator=g, dtype=torch.float64)
    t = torch.zeros(num_samples, num_outputs, dtype=torch.float64)
    idx = torch.randperm(num_samples, generator=g)[:num_changed]
    t[idx] = torch.randn(num_changed, num_outputs, generator=g, dtype=torch.float64) * 3
    build = depth2_construction if depth == 2 else depth3_construction
    net = build(x, t)
    out = net(x)
    assert out.shape == (num_samples, num_outputs)
    torch.testing.assert_close(out, t, atol=1e-7, rtol=0)
    m = fine_tuning_capacity(num_changed, depth, num_samples, num_outputs=num_outputs)
    assert ftc_neurons(net) <= m
    if depth == 3:
        assert ftc_neurons(net) == m == sum(ftc_widths(num_changed, 3, num_outputs=num_outputs))


def test_several_outputs_formula_against_brute_force() -> None:
    """Depth 3: ``min over S of 2S - 1 + 4 C ceil(N/S)`` by enumerating every S (slow reference)."""
    for c in (1, 2, 10):
        for n in range(1, 60):
            ref = min(2 * s - 1 + 4 * c * math.ceil(n / s) for s in range(1, n + 1))
            assert fine_tuning_capacity(n, 3, num_outputs=c) == ref
            assert fine_tuning_capacity(n, 2, num_outputs=c) == 3 * n  # shared knots: C-independent
            m = fine_tuning_capacity(n, 3, num_outputs=c)
            assert max_changed(m, 3, num_outputs=c) >= n
    with pytest.raises(ValueError, match="`num_outputs` must be an integer >= 1"):
        fine_tuning_capacity(3, num_outputs=0)
