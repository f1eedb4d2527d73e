"""The empirical NTK and the prompt-NTK fast path against brute-force references and closed forms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_reuse.functional.ntk import (
    assert_per_sample,
    empirical_ntk,
    features_to_kernel,
    ntk_matrix,
    ntk_vector_product,
    prompt_jacobian,
    topk_eigh,
)

D = torch.float64


def tiny_cnn(seed: int = 0, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 6 * 6, classes)
    ).to(D)
    return net.eval()


class Prompted(nn.Module):
    """g(x) = L(f(pad(x) + sigmoid(theta) * M)): a 4x4 target padded into a 6x6 source input."""

    def __init__(self, source: nn.Module, mapping: torch.Tensor) -> None:
        super().__init__()
        self.source = source.requires_grad_(False)
        self.theta = nn.Parameter(torch.randn(1, 6, 6, dtype=D) * 0.5)
        mask = torch.ones(1, 6, 6, dtype=D)
        mask[:, 1:5, 1:5] = 0
        self.register_buffer("mask", mask)
        self.register_buffer("mapping", mapping)

    def prompted(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, (1, 1, 1, 1)) + torch.sigmoid(self.theta) * self.mask

    def head(self, u: torch.Tensor) -> torch.Tensor:
        return self.source(u)[:, self.mapping]

    def scale(self) -> torch.Tensor:
        s = torch.sigmoid(self.theta.detach())
        return self.mask * s * (1 - s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.prompted(x))


def brute_force_theta_kernel(model: Prompted, x: torch.Tensor) -> torch.Tensor:
    """K[(i,a),(j,b)] from one autograd.grad call per sample and output: obviously correct, slow."""
    rows = []
    for i in range(len(x)):
        out = model(x[i : i + 1])[0]
        for a in range(out.shape[0]):
            (g,) = torch.autograd.grad(out[a], model.theta, retain_graph=True)
            rows.append(g.flatten())
    r = torch.stack(rows)
    return r @ r.T


@pytest.fixture
def prompted() -> tuple[Prompted, torch.Tensor]:
    torch.manual_seed(1)
    model = Prompted(tiny_cnn(), torch.tensor([2, 0, 3]))
    return model, torch.rand(7, 1, 4, 4, dtype=D)


def test_empirical_ntk_modes_match_brute_force(prompted) -> None:
    model, x = prompted
    ref = brute_force_theta_kernel(model, x)
    for mode in ("jacobian_contraction", "ntk_vector_products"):
        k = empirical_ntk(model, x, params=["theta"], mode=mode)
        assert k.shape == (7, 7, 3, 3)
        torch.testing.assert_close(ntk_matrix(k), ref, rtol=1e-9, atol=1e-12)


def test_empirical_ntk_cross_kernel_and_all_params() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(D)
    x1, x2 = torch.randn(4, 3, dtype=D), torch.randn(6, 3, dtype=D)

    def grads(x: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in range(len(x)):
            out = net(x[i : i + 1])[0]
            for a in range(2):
                g = torch.autograd.grad(out[a], list(net.parameters()), retain_graph=True)
                rows.append(torch.cat([t.flatten() for t in g]))
        return torch.stack(rows)

    ref = grads(x1) @ grads(x2).T
    for mode in ("jacobian_contraction", "ntk_vector_products"):
        k = empirical_ntk(net, x1, x2, mode=mode)
        assert k.shape == (4, 6, 2, 2)
        torch.testing.assert_close(ntk_matrix(k), ref)


def test_empirical_ntk_argument_errors(prompted) -> None:
    model, x = prompted
    with pytest.raises(ValueError, match="valid names"):
        empirical_ntk(model, x, params=["thetaa"])
    with pytest.raises(ValueError, match="`mode` must be one of"):
        empirical_ntk(model, x, params=["theta"], mode="nope")  # type: ignore[arg-type]


def test_kernel_symmetric_psd(prompted) -> None:
    model, x = prompted
    k = features_to_kernel(prompt_jacobian(model.head, model.prompted(x).detach(), model.scale()).phi)
    torch.testing.assert_close(k, k.T)
    ev = torch.linalg.eigvalsh(k)
    assert ev.min() >= -1e-8 * ev.max()


def test_fast_path_equals_brute_force_and_ntk_vector_products(prompted) -> None:
    model, x = prompted
    jac = prompt_jacobian(model.head, model.prompted(x).detach(), model.scale(), batch_size=3)
    k = features_to_kernel(jac.phi)
    torch.testing.assert_close(k, brute_force_theta_kernel(model, x), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(jac.logits, model(x).detach())
    v = torch.randn(7, 3, dtype=D)
    kv = ntk_vector_product(model, x, v, params=["theta"])
    torch.testing.assert_close(kv.flatten(), k @ v.flatten())


def test_prompt_ntk_is_masked_input_gradient_kernel(prompted) -> None:
    model, x = prompted
    u = model.prompted(x).detach()
    jac = prompt_jacobian(model.head, u, model.scale())
    assert jac.support.numel() == int(model.mask.sum())  # unmasked (centre) pixels are dropped
    # Reference: full input gradients J [nC, P], one autograd.grad per sample and output (independent
    # of prompt_jacobian), then J diag(scale^2) J^T.
    rows = []
    for i in range(len(u)):
        ui = u[i : i + 1].clone().requires_grad_(True)
        out = model.head(ui)[0]
        for a in range(out.shape[0]):
            (g,) = torch.autograd.grad(out[a], ui, retain_graph=True)
            rows.append(g.flatten())
    full = torch.stack(rows)
    assert full.shape == (21, 36)
    s = model.scale().flatten()
    torch.testing.assert_close(features_to_kernel(jac.phi), (full * s**2) @ full.T)
    # Unmasked (centre) pixels contribute nothing: the theta-gradient vanishes there.
    out = model(x[:1])[0, 1]
    (g,) = torch.autograd.grad(out, model.theta)
    assert g[:, 1:5, 1:5].abs().max() == 0 and g.abs().sum() > 0


def test_linear_source_closed_form() -> None:
    torch.manual_seed(0)
    p, ks, c, n = 12, 6, 3, 9
    w = torch.randn(ks, p, dtype=D)
    lmap = torch.zeros(c, ks, dtype=D)
    lmap[torch.arange(c), torch.tensor([4, 1, 2])] = 1.0
    d = torch.rand(p, dtype=D) * (torch.rand(p) > 0.3)

    def head(u: torch.Tensor) -> torch.Tensor:
        return u @ w.T @ lmap.T

    k = features_to_kernel(prompt_jacobian(head, torch.randn(n, p, dtype=D), d).phi)
    a = lmap @ w @ torch.diag(d**2) @ w.T @ lmap.T
    ev = torch.linalg.eigvalsh(k).flip(0)
    assert torch.linalg.matrix_rank(k, rtol=1e-10) <= c
    torch.testing.assert_close(ev[:c], n * torch.linalg.eigvalsh(a).flip(0))
    assert ev[c:].abs().max() <= 1e-10 * ev[0]


def test_scaling_source_scales_kernel(prompted) -> None:
    model, x = prompted
    u = model.prompted(x).detach()
    k1 = features_to_kernel(prompt_jacobian(model.head, u, model.scale()).phi)
    k3 = features_to_kernel(prompt_jacobian(lambda v: 3.0 * model.head(v), u, model.scale()).phi)
    torch.testing.assert_close(k3, 9.0 * k1)


def test_batch_size_and_order_invariance(prompted) -> None:
    model, x = prompted
    u = model.prompted(x).detach()
    k = features_to_kernel(prompt_jacobian(model.head, u, model.scale(), batch_size=7).phi)
    for bs in (1, 2, 5):
        kb = features_to_kernel(prompt_jacobian(model.head, u, model.scale(), batch_size=bs).phi)
        torch.testing.assert_close(kb, k)
    perm = torch.randperm(7)
    kp = features_to_kernel(prompt_jacobian(model.head, u[perm], model.scale(), batch_size=3).phi)
    rows = (perm[:, None] * 3 + torch.arange(3)).flatten()
    torch.testing.assert_close(kp, k[rows][:, rows])


@pytest.mark.parametrize("kind", ["gaussian", "countsketch"])
def test_sketch_error_shrinks_like_inverse_sqrt(kind: str) -> None:
    torch.manual_seed(0)
    rows = torch.randn(8, 400, dtype=D)
    k = rows @ rows.T

    def err(s: int) -> float:
        errs = []
        for seed in range(12):
            jac = prompt_jacobian(
                lambda u: u @ rows.T, torch.zeros(3, 400, dtype=D), sketch=kind, sketch_dim=s, seed=seed
            )
            ks = features_to_kernel(jac.phi[:1])  # the 8 output rows of one sample
            errs.append(float((ks - k).norm() / k.norm()))
        return sum(errs) / len(errs)

    e64, e1024 = err(64), err(1024)
    assert 2.5 < e64 / e1024 < 6.5  # sqrt(1024 / 64) = 4
    assert e1024 < 0.1


def test_topk_eigh_matches_dense_for_dense_features_and_matrix_free(prompted) -> None:
    model, x = prompted
    jac = prompt_jacobian(model.head, model.prompted(x).detach(), model.scale())
    k = features_to_kernel(jac.phi)
    ref = torch.linalg.eigvalsh(k).flip(0)[:5]
    vals_d, vecs_d = topk_eigh(k, 5)
    vals_f, _ = topk_eigh(jac.phi, 5, features=True)

    def kv(v: torch.Tensor) -> torch.Tensor:  # matrix-free: NTK-vector products, one column at a time
        return torch.stack(
            [ntk_vector_product(model, x, col.view(7, 3), params=["theta"]).flatten() for col in v.T], 1
        )

    vals_m, _ = topk_eigh(kv, 5, dim=21, n_iter=6)
    for vals in (vals_d, vals_f, vals_m):
        torch.testing.assert_close(vals, ref, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(k @ vecs_d, vecs_d * vals_d, rtol=1e-5, atol=1e-8)


def test_pseudo_ntk_is_sum_of_logits_kernel(prompted) -> None:
    model, x = prompted
    u = model.prompted(x).detach()
    full = prompt_jacobian(model.head, u, model.scale()).phi  # [n, C, P]
    pseudo = prompt_jacobian(model.head, u, model.scale(), pseudo=True).phi  # [n, P]
    assert pseudo.shape == (7, full.shape[-1])
    torch.testing.assert_close(pseudo, full.sum(1) / 3**0.5)


def test_train_mode_batchnorm_refused_with_a_fix() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"BatchNorm2d.*eval\(\)"):
        prompt_jacobian(net, torch.rand(3, 1, 4, 4))
    with pytest.raises(ValueError, match="Dropout"):
        assert_per_sample(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)))
    net.eval()
    assert prompt_jacobian(net, torch.rand(3, 1, 4, 4)).phi.shape == (3, 2, 16)
