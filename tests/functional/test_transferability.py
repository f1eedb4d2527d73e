"""Transferability baselines against slow, independent float64 transcriptions of each paper's formula.

The references below are written from the papers (and ``specs/transferability.md``) with numpy and plain
loops, one class / one sample at a time; they share no code with ``lightning_reuse.functional``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_reuse.functional import h_score, knn_accuracy, leep, linear_probe_accuracy, logme, nce
from lightning_reuse.functional.probe import probe_folds


# --------------------------------------------------------------------------- references
def slow_logme(f: np.ndarray, y: np.ndarray, iters: int = 200) -> float:
    """You et al. 2021, Algorithm 1, one class at a time, the evidence from its definition."""
    n, d = f.shape
    sigma2 = np.linalg.eigvalsh(f.T @ f)
    sigma2 = np.clip(sigma2, 0, None)
    evidences = []
    for c in range(int(y.max()) + 1):
        t = (y == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(iters):
            a = alpha * np.eye(d) + beta * f.T @ f
            m = beta * np.linalg.solve(a, f.T @ t)
            gamma = sum(beta * s / (alpha + beta * s) for s in sigma2)
            alpha_new = gamma / (m @ m)
            beta_new = (n - gamma) / np.sum((f @ m - t) ** 2)
            done = abs(alpha_new / beta_new - alpha / beta) / (alpha / beta) < 1e-12
            alpha, beta = alpha_new, beta_new
            if done:
                break
        a = alpha * np.eye(d) + beta * f.T @ f
        m = beta * np.linalg.solve(a, f.T @ t)
        evidence = (
            n / 2 * math.log(beta)
            + d / 2 * math.log(alpha)
            - n / 2 * math.log(2 * math.pi)
            - beta / 2 * np.sum((f @ m - t) ** 2)
            - alpha / 2 * (m @ m)
            - 0.5 * np.linalg.slogdet(a)[1]
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def slow_leep(theta: np.ndarray, y: np.ndarray) -> float:
    """Nguyen et al. 2020, eqs. (1)-(2), with loops over samples and classes."""
    n, z_count = theta.shape
    classes = int(y.max()) + 1
    joint = np.zeros((classes, z_count))
    for i in range(n):
        for z in range(z_count):
            joint[y[i], z] += theta[i, z] / n
    cond = joint / joint.sum(0, keepdims=True)
    total = 0.0
    for i in range(n):
        total += math.log(sum(cond[y[i], z] * theta[i, z] for z in range(z_count)))
    return total / n


def slow_nce(z: np.ndarray, y: np.ndarray) -> float:
    """Tran et al. 2019: NCE = -H(Y | Z) from the empirical joint distribution."""
    n = len(y)
    joint: dict[tuple[int, int], float] = {}
    for yi, zi in zip(y.tolist(), z.tolist(), strict=True):
        joint[(yi, zi)] = joint.get((yi, zi), 0.0) + 1 / n
    pz: dict[int, float] = {}
    for (_, zi), p in joint.items():
        pz[zi] = pz.get(zi, 0.0) + p
    return sum(p * math.log(p / pz[zi]) for (_, zi), p in joint.items())


def slow_h_score(f: np.ndarray, y: np.ndarray) -> float:
    """Bao et al. 2019: tr(cov(f)^+ cov(E[f | y])), covariances centred explicitly, per-sample class means."""
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    cov_f = np.cov(f, rowvar=False, bias=True)
    cov_g = np.cov(g, rowvar=False, bias=True)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-15) @ cov_g))


def slow_knn(f: np.ndarray, y: np.ndarray, k: int) -> float:
    correct = 0
    for i in range(len(y)):
        sims = [
            (f[i] @ f[j] / (np.linalg.norm(f[i]) * np.linalg.norm(f[j])), j) for j in range(len(y)) if j != i
        ]
        sims.sort(key=lambda s: -s[0])
        votes = np.bincount([y[j] for _, j in sims[:k]], minlength=int(y.max()) + 1)
        correct += int(np.argmax(votes) == y[i])
    return correct / len(y)


def slow_probe(f: np.ndarray, y: np.ndarray, fold: np.ndarray, ridge: float) -> float:
    classes = int(y.max()) + 1
    correct = 0
    for k in np.unique(fold):
        tr, te = fold != k, fold == k
        x1 = np.hstack([f[tr], np.ones((tr.sum(), 1))])  # intercept as an unpenalised column
        t = np.eye(classes)[y[tr]]
        xc = f[tr] - f[tr].mean(0)
        lam = ridge * np.trace(xc.T @ xc) / f.shape[1]
        pen = lam * np.eye(f.shape[1] + 1)
        pen[-1, -1] = 0.0
        w = np.linalg.solve(x1.T @ x1 + pen, x1.T @ t)
        pred = np.hstack([f[te], np.ones((te.sum(), 1))]) @ w
        correct += int((pred.argmax(1) == y[te]).sum())
    return correct / len(y)


# --------------------------------------------------------------------------- data
def make(seed: int, n: int = 90, d: int = 6, classes: int = 3, signal: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    f = (
        torch.randn(n, d, generator=g, dtype=torch.float64)
        + signal * torch.randn(classes, d, generator=g, dtype=torch.float64)[y]
    )
    logits = (
        torch.randn(n, 5, generator=g, dtype=torch.float64)
        + signal * torch.randn(classes, 5, generator=g, dtype=torch.float64)[y]
    )
    return f, y, logits.softmax(-1)


SEEDS = [0, 1, 2, 3]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(90, 6, 3), (40, 12, 4), (20, 30, 2)])
def test_logme_matches_reference(seed: int, shape: tuple[int, int, int]) -> None:
    f, y, _ = make(seed, *shape)
    ref = slow_logme(f.numpy(), y.numpy())
    # n < D: the residual from Gram statistics loses ~1e-7 relative to cancellation (documented in logme)
    rel = 1e-9 if shape[0] > shape[1] else 1e-6
    assert float(logme(f, y)) == pytest.approx(ref, rel=rel)


@pytest.mark.parametrize("seed", SEEDS)
def test_leep_and_nce_match_references(seed: int) -> None:
    _, y, probs = make(seed)
    assert float(leep(probs, y)) == pytest.approx(slow_leep(probs.numpy(), y.numpy()), rel=1e-10)
    z = probs.argmax(-1)
    assert float(nce(z, y)) == pytest.approx(slow_nce(z.numpy(), y.numpy()), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(90, 6, 3), (60, 10, 5), (30, 80, 3)])
def test_h_score_matches_reference(seed: int, shape: tuple[int, int, int]) -> None:
    f, y, _ = make(seed, *shape)  # (30, 80, 3): n < D, computed in the row space
    assert float(h_score(f, y)) == pytest.approx(slow_h_score(f.numpy(), y.numpy()), rel=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logme_with_far_fewer_samples_than_features_is_finite_and_matches_reference(seed: int) -> None:
    """n << D: every class is fitted exactly, beta grows without bound and the evidence converges; the
    Gram-statistics route gave NaN / -inf here, the SVD route the reference's value (its 200 fixed steps stop
    at a finite beta: 1e-7 apart)."""
    f, y, _ = make(seed, n=60, d=200)
    value = float(logme(f, y))
    assert math.isfinite(value)
    assert value == pytest.approx(slow_logme(f.numpy(), y.numpy()), rel=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_logme_and_h_score_with_n_below_d_equal_the_full_space(seed: int) -> None:
    """The n < D routes (SVD of F for LogME, the row space for H-score) against the D x D statistics."""
    from lightning_reuse.functional.transferability import _h_score_from_stats, _logme_from_stats

    f, y, _ = make(seed, n=20, d=30, classes=2)
    t = torch.nn.functional.one_hot(y, 2).double()
    full_logme = _logme_from_stats(f.T @ f, f.T @ t, t.sum(0), len(y))
    full_h = _h_score_from_stats(f.sum(0), f.T @ f, t.T @ f, t.sum(0))
    assert float(logme(f, y)) == pytest.approx(float(full_logme), rel=1e-6)
    assert float(h_score(f, y)) == pytest.approx(float(full_h), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_an_eigensolver_failure_falls_back_to_the_svd_with_the_same_value(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LAPACK's ``eigh`` failed to converge on EfficientNet Gram matrices on one machine; it cannot be made
    to fail on demand, so the failure is simulated; the streaming metrics (D x D statistics) must still score."""
    from lightning_reuse.metrics import HScore, LogME

    f, y, _ = make(seed)
    expected = float(logme(f, y)), float(h_score(f, y))

    def no_convergence(*args: object, **kwargs: object) -> None:
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    real_pinv = torch.linalg.pinv

    def pinv_without_eigh(
        a: torch.Tensor, *args: object, hermitian: bool = False, **kwargs: object
    ) -> torch.Tensor:
        if hermitian:
            no_convergence()
        return real_pinv(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", no_convergence)
    monkeypatch.setattr(torch.linalg, "pinv", pinv_without_eigh)
    got_logme = LogME(num_classes=3)
    got_logme.update(f, y)
    got_h = HScore(num_classes=3)
    got_h.update(f, y)
    assert float(got_logme.compute()) == pytest.approx(expected[0], rel=1e-9)
    assert float(got_h.compute()) == pytest.approx(expected[1], rel=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_knn_matches_reference(seed: int, k: int) -> None:
    f, y, _ = make(seed, signal=0.7)
    assert float(knn_accuracy(f, y, k=k, chunk_size=17)) == pytest.approx(slow_knn(f.numpy(), y.numpy(), k))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("folds", [2, 5])
def test_probe_matches_reference(seed: int, folds: int) -> None:
    f, y, _ = make(seed, signal=0.7)
    fold = probe_folds(len(y), folds, seed=3).numpy()
    ref = slow_probe(f.numpy(), y.numpy(), fold, ridge=0.1)
    assert float(linear_probe_accuracy(f, y, folds=folds, ridge=0.1, seed=3)) == pytest.approx(ref)


# --------------------------------------------------------------------------- properties
@pytest.mark.parametrize("seed", SEEDS)
def test_leep_and_nce_are_at_most_zero_and_zero_when_z_determines_y(seed: int) -> None:
    _, y, probs = make(seed)
    assert float(leep(probs, y)) <= 0
    assert float(nce(probs.argmax(-1), y)) <= 0
    assert float(nce(y * 2 + 1, y)) == pytest.approx(0.0, abs=1e-12)  # z determines y
    assert float(leep(torch.nn.functional.one_hot(y, 5).double(), y)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_invariances(seed: int) -> None:
    """Relabelling the target classes or the source classes changes nothing; H-score ignores any
    invertible affine map of the features; the probe and k-NN (cosine) ignore a positive rescaling."""
    f, y, probs = make(seed)
    perm_y = torch.tensor([2, 0, 1])[y]
    perm_z = torch.randperm(5, generator=torch.Generator().manual_seed(seed))
    for score in (logme, h_score, knn_accuracy, linear_probe_accuracy):
        assert float(score(f, perm_y)) == pytest.approx(float(score(f, y)), rel=1e-8)
    assert float(leep(probs[:, perm_z], y)) == pytest.approx(float(leep(probs, y)), rel=1e-10)
    assert float(nce(perm_z[probs.argmax(-1)], perm_y)) == pytest.approx(float(nce(probs.argmax(-1), y)))
    a = torch.randn(6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 3 * torch.eye(
        6
    )
    assert float(h_score(f @ a + 5.0, y)) == pytest.approx(float(h_score(f, y)), rel=1e-7)
    for score in (knn_accuracy, linear_probe_accuracy):
        assert float(score(7.5 * f, y)) == pytest.approx(float(score(f, y)))


def test_scores_rank_informative_features_above_noise() -> None:
    f, y, _ = make(0, signal=3.0)
    noise = (
        torch.randn_like(f, generator=torch.Generator().manual_seed(9)) if False else make(5, signal=0.0)[0]
    )
    for score in (logme, h_score, knn_accuracy, linear_probe_accuracy):
        assert float(score(f, y)) > float(score(noise, y)), score.__name__


def test_h_score_shrinkage_zero_is_the_original_and_bounded() -> None:
    f, y, _ = make(1)
    assert float(h_score(f, y, shrinkage=0.0)) == pytest.approx(float(h_score(f, y)), rel=1e-8)
    shrunk = float(h_score(f, y, shrinkage=0.5))
    assert 0 <= shrunk <= 2  # C - 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: logme(torch.randn(4, 2), torch.tensor([0.0, 1.0, 0.0, 1.0])), "labels"),
        (lambda: h_score(torch.randn(4), torch.tensor([0, 1, 0, 1])), "features"),
        (lambda: leep(torch.randn(4, 3), torch.tensor([0, 1, 0, 1])), "source_probs"),
        (lambda: nce(torch.tensor([0.5, 1.0]), torch.tensor([0, 1])), "source_labels"),
        (lambda: knn_accuracy(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), k=4), "`k`"),
        (lambda: linear_probe_accuracy(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), folds=1), "`folds`"),
        (lambda: h_score(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), shrinkage=1.0), "`shrinkage`"),
    ],
)
def test_bad_inputs_are_refused_with_a_hint(call, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "HINT:" in str(err.value)
