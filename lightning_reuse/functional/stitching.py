"""Training-free stitching and representation mismatch: least-squares affine stitch, linear CKA, MSE.

The closed-form stitch is the "direct matching" baseline of Csiszarik, Korosi-Szabo, Matszangosz, Papp,
Varga, "Similarity and Matching of Neural Network Representations", NeurIPS 2021: fit ``Y ~ X W^T + b``
by least squares (Moore-Penrose pseudo-inverse) on paired activations of sender and receiver. Linear CKA
is from Kornblith, Norouzi, Lee, Hinton, "Similarity of Neural Network Representations Revisited",
ICML 2019. Model stitching itself: Bansal, Nakkiran, Barak, NeurIPS 2021; Hernandez, Dangovski, Lu,
Soljacic, arXiv 2303.11277.

Example:
    >>> import torch
    >>> x = torch.randn(50, 3, dtype=torch.float64)
    >>> w_true, b_true = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    >>> w, b = least_squares_affine(x, x @ w_true.T + b_true)
    >>> bool(torch.allclose(w, w_true) and torch.allclose(b, b_true))
    True
    >>> round(float(linear_cka(x, 2.0 * x)), 6)
    1.0
"""

from __future__ import annotations

import torch
from torch import Tensor


def channel_rows(activation: Tensor) -> Tensor:
    """Reshape a conv activation ``[N, C, H, W]`` to rows ``[N*H*W, C]`` (one row per pixel).

    A 1x1 convolution is the same affine map applied to every row, so fitting it by least squares on
    these rows is exactly fitting the 1x1 conv. 2-D inputs ``[N, D]`` are returned unchanged.

    >>> channel_rows(torch.zeros(2, 3, 4, 5)).shape
    torch.Size([40, 3])
    """
    if activation.dim() == 2:
        return activation
    if activation.dim() < 3:
        raise ValueError(
            f"`activation` must be [N, D] or [N, C, ...]; got shape {tuple(activation.shape)}. "
            "HINT: add a batch dimension."
        )
    c = activation.shape[1]
    return activation.movedim(1, -1).reshape(-1, c)


def least_squares_affine(x: Tensor, y: Tensor, ridge: float = 0.0) -> tuple[Tensor, Tensor]:
    """Closed-form affine map ``y ~ x @ weight.T + bias`` minimising the squared error.

    .. math::
        [W^\\top; b^\\top] = \\tilde X^{+} Y, \\qquad \\tilde X = [X, \\mathbf 1]

    with :math:`\\tilde X^{+}` the Moore-Penrose pseudo-inverse (minimum-norm solution when ``x`` is rank
    deficient). With ``ridge > 0`` the weight (not the bias) is penalised: features are centred and
    :math:`W^\\top = (X_c^\\top X_c + \\lambda I)^{-1} X_c^\\top Y_c`, :math:`b = \\bar y - W \\bar x`.

    Args:
        x: sender activations ``[N, D_in]`` (use :func:`channel_rows` for conv maps).
        y: receiver activations ``[N, D_out]``, same ``N``.
        ridge: L2 penalty on the weight, ``>= 0``.

    Returns:
        ``(weight [D_out, D_in], bias [D_out])`` in ``x``'s dtype. Computed in float64.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`x` and `y` must be 2-D with the same number of rows; got x {tuple(x.shape)}, "
            f"y {tuple(y.shape)}. HINT: reshape conv maps with `channel_rows` or `.flatten(1)`."
        )
    if ridge < 0:
        raise ValueError(f"`ridge` must be >= 0, got {ridge}.")
    dtype = x.dtype if x.is_floating_point() else torch.float32
    xd, yd = x.detach().double(), y.detach().double()
    if ridge == 0:
        aug = torch.cat([xd, torch.ones(len(xd), 1, dtype=xd.dtype, device=xd.device)], dim=1)
        sol = torch.linalg.pinv(aug) @ yd  # [D_in + 1, D_out]
        weight, bias = sol[:-1].T, sol[-1]
    else:
        x_mean, y_mean = xd.mean(0), yd.mean(0)
        xc, yc = xd - x_mean, yd - y_mean
        gram = xc.T @ xc + ridge * torch.eye(xd.shape[1], dtype=xd.dtype, device=xd.device)
        weight = torch.linalg.solve(gram, xc.T @ yc).T
        bias = y_mean - weight @ x_mean
    return weight.to(dtype).contiguous(), bias.to(dtype).contiguous()


def _flat(x: Tensor, name: str) -> Tensor:
    if x.dim() < 2:
        raise ValueError(f"`{name}` must be [N, ...] with N samples; got shape {tuple(x.shape)}.")
    return x.detach().flatten(1).double()


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear centred kernel alignment between two representations of the same ``N`` inputs.

    .. math::
        \\mathrm{CKA}(X, Y) = \\frac{\\lVert Y_c^\\top X_c \\rVert_F^2}
        {\\lVert X_c^\\top X_c \\rVert_F \\, \\lVert Y_c^\\top Y_c \\rVert_F}

    with :math:`X_c, Y_c` the column-centred, per-sample flattened activations. In ``[0, 1]``; 1 for
    representations equal up to an orthogonal transform and an isotropic scaling.

    Args:
        x: ``[N, ...]`` (flattened per sample).
        y: ``[N, ...]``, same ``N``; feature sizes may differ.

    Returns:
        A 0-d float64 tensor (NaN when one representation is constant).
    """
    xf, yf = _flat(x, "x"), _flat(y, "y")
    if xf.shape[0] != yf.shape[0]:
        raise ValueError(f"`x` and `y` need the same N; got {xf.shape[0]} and {yf.shape[0]}.")
    xf, yf = xf - xf.mean(0), yf - yf.mean(0)
    n = xf.shape[0]
    if max(xf.shape[1], yf.shape[1]) > n:  # Gram form is cheaper when features outnumber samples
        k, l_ = xf @ xf.T, yf @ yf.T
        return (k * l_).sum() / (k.norm() * l_.norm())
    return (yf.T @ xf).square().sum() / ((xf.T @ xf).norm() * (yf.T @ yf).norm())


def representation_mse(x: Tensor, y: Tensor, normalized: bool = False) -> Tensor:
    """Mean squared difference between two activations of the same shape.

    With ``normalized=True`` it is divided by the variance of ``y`` (the receiver's own representation),
    so 0 means identical and 1 is as far as predicting ``y``'s mean everywhere.

    >>> float(representation_mse(torch.ones(2, 3), torch.zeros(2, 3)))
    1.0
    """
    if x.shape != y.shape:
        raise ValueError(f"`x` and `y` must have the same shape; got {tuple(x.shape)} and {tuple(y.shape)}.")
    mse = (x.detach().double() - y.detach().double()).square().mean()
    if normalized:
        mse = mse / y.detach().double().var(unbiased=False).clamp_min(1e-12)
    return mse
