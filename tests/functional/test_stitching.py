"""Least-squares affine stitch, linear CKA and representation MSE against references and their properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_reuse.functional.stitching import (
    channel_rows,
    least_squares_affine,
    linear_cka,
    representation_mse,
)


def _cka_reference(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kornblith et al. 2019 via HSIC of Gram matrices with the centring matrix H, in numpy (slow, obvious)."""
    x = x.reshape(len(x), -1).double().numpy()
    y = y.reshape(len(y), -1).double().numpy()
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.trace(k @ l_) / np.sqrt(np.trace(k @ k) * np.trace(l_ @ l_)))


@pytest.mark.parametrize(("n", "d_in", "d_out"), [(40, 3, 5), (100, 8, 2), (30, 6, 6)])
def test_least_squares_recovers_exact_affine_map(n: int, d_in: int, d_out: int) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    w, b = torch.randn(d_out, d_in, generator=g, dtype=torch.float64), torch.randn(d_out, generator=g)
    w_hat, b_hat = least_squares_affine(x, x @ w.T + b.double())
    torch.testing.assert_close(w_hat, w)
    torch.testing.assert_close(b_hat, b.double())


def test_least_squares_matches_numpy_lstsq_on_noisy_data() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 4, generator=g), torch.randn(60, 3, generator=g)
    w_hat, b_hat = least_squares_affine(x, y)
    aug = np.concatenate([x.double().numpy(), np.ones((60, 1))], axis=1)
    sol = np.linalg.lstsq(aug, y.double().numpy(), rcond=None)[0]
    np.testing.assert_allclose(w_hat.double().numpy(), sol[:-1].T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b_hat.double().numpy(), sol[-1], rtol=1e-5, atol=1e-6)
    assert w_hat.dtype == torch.float32


def test_ridge_shrinks_towards_zero_and_keeps_bias_unpenalised() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(80, 5, generator=g, dtype=torch.float64)
    y = x @ torch.randn(5, 2, generator=g, dtype=torch.float64) + 7.0
    w0, _ = least_squares_affine(x, y)
    w_small, b_small = least_squares_affine(x, y, ridge=1e-9)
    w_big, b_big = least_squares_affine(x, y, ridge=1e6)
    torch.testing.assert_close(w_small, w0)
    assert w_big.norm() < 0.01 * w0.norm()
    torch.testing.assert_close(b_big, y.mean(0), rtol=1e-3, atol=1e-2)  # bias -> mean of y


def test_rank_deficient_sender_gives_minimum_norm_solution() -> None:
    x = torch.randn(50, 2, dtype=torch.float64)
    x = torch.cat([x, x[:, :1]], dim=1)  # duplicated column
    y = x[:, :1] * 2.0
    w, _ = least_squares_affine(x, y)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64))


def test_least_squares_input_errors() -> None:
    with pytest.raises(ValueError, match="same number of rows"):
        least_squares_affine(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="ridge"):
        least_squares_affine(torch.zeros(3, 2), torch.zeros(3, 2), ridge=-1.0)


def test_channel_rows_layout_matches_1x1_conv() -> None:
    x = torch.randn(2, 3, 4, 5)
    w, b = torch.randn(6, 3), torch.randn(6)
    conv = torch.nn.functional.conv2d(x, w[:, :, None, None], b)
    torch.testing.assert_close(channel_rows(conv), channel_rows(x) @ w.T + b)


@pytest.mark.parametrize("shape_y", [(50, 7), (50, 80), (50, 3, 2, 2)])
def test_cka_matches_hsic_reference(shape_y: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 10, generator=g)
    y = torch.randn(*shape_y, generator=g) + 0.5 * x.sum(1).reshape(-1, *[1] * (len(shape_y) - 1))
    assert float(linear_cka(x, y)) == pytest.approx(_cka_reference(x, y), rel=1e-9)


def test_cka_properties() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 12, generator=g, dtype=torch.float64)
    y = torch.randn(64, 9, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    assert float(linear_cka(x, x)) == pytest.approx(1.0, abs=1e-12)
    assert float(linear_cka(x, 3.5 * x @ q + 2.0)) == pytest.approx(1.0, abs=1e-10)  # orth., scale, shift
    base = float(linear_cka(x, y))
    assert float(linear_cka(x @ q, 0.1 * y)) == pytest.approx(base, abs=1e-10)
    assert float(linear_cka(y, x)) == pytest.approx(base, abs=1e-12)  # symmetric
    assert 0.0 <= base < 0.5
    # not invariant to a general (non-orthogonal) invertible map
    a = torch.diag(torch.logspace(-2, 2, 12, dtype=torch.float64))
    assert float(linear_cka(x, x @ a)) < 0.9


def test_mse() -> None:
    x = torch.randn(10, 4)
    assert float(representation_mse(x, x)) == 0.0
    assert float(representation_mse(x + 2.0, x)) == pytest.approx(4.0)
    y = torch.randn(10, 4)
    torch.testing.assert_close(
        representation_mse(y.mean() + 0 * y, y, normalized=True), torch.tensor(1.0, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="same shape"):
        representation_mse(torch.zeros(2, 3), torch.zeros(2, 4))
