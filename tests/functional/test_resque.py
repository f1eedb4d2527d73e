"""RESQUE functional core: reference implementations, the spec's properties, and bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_reuse.functional import RESQUEConfig, pool_features, resque_dist, resque_task
from lightning_reuse.functional._clustering import adjusted_rand_index, kmeans_lloyd
from lightning_reuse.functional.resque import RESQUEClassSkippedWarning, angular_distance


def slow_resque_dist(f: np.ndarray, y: np.ndarray, f2: np.ndarray, y2: np.ndarray) -> float:
    """The paper's formula, written out: per-class sums, arccos of the normalised dot product, mean."""
    angles = []
    for c in sorted(set(y.tolist()) & set(y2.tolist())):
        s = np.zeros(f.shape[1])
        for i in range(len(y)):
            if y[i] == c:
                s = s + f[i].astype(np.float64)
        s2 = np.zeros(f.shape[1])
        for j in range(len(y2)):
            if y2[j] == c:
                s2 = s2 + f2[j].astype(np.float64)
        cos = float(s @ s2) / (np.linalg.norm(s) * np.linalg.norm(s2))
        angles.append(math.acos(max(-1.0, min(1.0, cos))) / math.pi)
    return sum(angles) / len(angles)


def make_data(seed: int, n: int = 120, d: int = 6, k: int = 4, shift: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    means = torch.randn(k, d, generator=g)
    f = means[y] + torch.randn(n, d, generator=g)
    y2 = torch.randint(0, k, (n // 2,), generator=g)
    f2 = means[y2] + torch.randn(n // 2, d, generator=g) + shift * torch.randn(d, generator=g)
    return f, y, f2, y2


@pytest.mark.parametrize("seed", range(4))
def test_dist_equals_slow_reference(seed: int) -> None:
    f, y, f2, y2 = make_data(seed)
    ours = float(resque_dist(f, y, f2, y2))
    ref = slow_resque_dist(f.numpy(), y.numpy(), f2.numpy(), y2.numpy())
    assert ours == pytest.approx(ref, abs=1e-9)
    assert 0.0 < ours < 1.0


def test_dist_zero_on_identical_data_even_reordered_float32() -> None:
    f, y, _, _ = make_data(0, n=400, d=64)
    f = f * 1e3  # large float32 values
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    assert float(resque_dist(f, y, f, y)) == 0.0
    assert float(resque_dist(f, y, f[perm], y[perm])) < 1e-7


def test_dist_analytic_2d_angle() -> None:
    alpha = 0.7
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    rot = torch.tensor([[math.cos(alpha), -math.sin(alpha)], [math.sin(alpha), math.cos(alpha)]])
    labels = torch.tensor([0, 1])
    score, per_class = resque_dist(u, labels, u @ rot.T, labels, return_per_class=True)
    assert per_class.tolist() == pytest.approx([alpha / math.pi] * 2, abs=1e-7)
    assert float(score) == pytest.approx(alpha / math.pi, abs=1e-7)


def test_dist_invariances() -> None:
    f, y, f2, y2 = make_data(3)
    base = float(resque_dist(f, y, f2, y2))
    g = torch.Generator().manual_seed(5)
    q = torch.linalg.qr(torch.randn(6, 6, generator=g))[0]
    perm = torch.randperm(len(y2), generator=g)
    relabel = torch.tensor([2, 0, 3, 1])
    checks = {
        "order": resque_dist(f, y, f2[perm], y2[perm]),
        "duplication": resque_dist(f, y, torch.cat([f2, f2]), torch.cat([y2, y2])),
        "rescaling": resque_dist(3.0 * f, y, 0.01 * f2, y2),
        "orthogonal": resque_dist(f @ q, y, f2 @ q, y2),
        "relabeling": resque_dist(f, relabel[y], f2, relabel[y2]),
        "symmetry": resque_dist(f2, y2, f, y),
    }
    for name, value in checks.items():
        assert float(value) == pytest.approx(base, abs=1e-7), name  # float32 inputs


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0), shift=st.floats(0.0, 10.0))
def test_dist_in_unit_interval(seed: int, scale: float, shift: float) -> None:
    f, y, f2, y2 = make_data(seed, n=40, shift=shift)
    score = float(resque_dist(scale * f, y, f2, y2))
    assert 0.0 <= score <= 1.0
    assert float(angular_distance(f[:1], -f[:1])[0]) == pytest.approx(1.0)


def test_dist_paired_mode() -> None:
    f, y, _, _ = make_data(0)
    noisy = f + 0.3 * torch.randn(f.shape, generator=torch.Generator().manual_seed(0))
    assert float(resque_dist(f, y, noisy)) == pytest.approx(float(resque_dist(f, y, noisy, y)))
    with pytest.raises(ValueError, match="Paired mode"):
        resque_dist(f, y, noisy[:10])


def test_dist_class_missing_on_one_side_warns_and_skips() -> None:
    f, y, f2, y2 = make_data(1)
    keep = y2 != 3
    with pytest.warns(RESQUEClassSkippedWarning, match=r"classes \[3\] appear on one side only"):
        score, per_class = resque_dist(f, y, f2[keep], y2[keep], return_per_class=True)
    assert math.isnan(float(per_class[3]))
    assert float(score) == pytest.approx(float(per_class[:3].mean()))
    ref = slow_resque_dist(f.numpy(), y.numpy(), f2[keep].numpy(), y2[keep].numpy())
    assert float(score) == pytest.approx(ref, abs=1e-9)


def test_dist_bad_inputs_are_clear_errors() -> None:
    f, y, f2, y2 = make_data(0)
    bad = f.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf in 1 of"):
        resque_dist(bad, y, f2, y2)
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        resque_dist(f, y, bad, y)
    with pytest.raises(ValueError, match="no labels were given.*label_source='prediction'"):
        resque_dist(f, None, f2, y2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        resque_dist(f[:0], y[:0], f2, y2)
    with pytest.raises(TypeError, match="integer class indices"):
        resque_dist(f, y.float(), f2, y2)
    with pytest.raises(ValueError, match="same width"):
        resque_dist(f, y, f2[:, :3], y2)
    with pytest.raises(ValueError, match="out of range for num_classes=2"):
        resque_dist(f, y, f2, y2, num_classes=2)
    with (
        pytest.raises(ValueError, match="no class has samples on both sides"),
        pytest.warns(RESQUEClassSkippedWarning),
    ):
        resque_dist(f[y == 0], y[y == 0], f2[y2 == 1], y2[y2 == 1])


def test_dist_num_classes_zero_or_invalid_is_an_error_not_inferred() -> None:
    f, y, f2, y2 = make_data(0)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"`num_classes` must be an int >= 1.*got"):
            resque_dist(f, y, f2, y2, num_classes=bad)  # type: ignore[arg-type]
    k = int(max(y.max(), y2.max())) + 1
    assert torch.equal(resque_dist(f, y, f2, y2, num_classes=k), resque_dist(f, y, f2, y2))
    assert torch.equal(resque_dist(f, y, f2, y2, num_classes=k + 3), resque_dist(f, y, f2, y2))


def test_dist_zero_feature_sum_is_skipped_with_warning() -> None:
    f, y, f2, y2 = make_data(0)
    f = f.clone()
    f[y == 2] = 0.0
    with pytest.warns(RESQUEClassSkippedWarning, match="all-zero feature sum"):
        _, per_class = resque_dist(f, y, f2, y2, return_per_class=True)
    assert math.isnan(float(per_class[2])) and not math.isnan(float(per_class[1]))


def test_pool_features_shapes_and_errors() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.equal(pool_features(x), x.mean(dim=(2, 3)))
    assert pool_features(x, "flatten").shape == (2, 48)
    tokens = torch.randn(2, 5, 7)
    assert torch.equal(pool_features(tokens), tokens.mean(1))  # token outputs: the token mean (issue 14)
    assert torch.equal(pool_features(tokens, "feature_mean"), tokens.mean(-1))  # the authors' reduction
    assert torch.equal(pool_features(tokens, "cls"), tokens[:, 0])
    assert torch.equal(pool_features(tokens, "token_mean"), tokens.mean(1))
    with pytest.raises(ValueError, match="one of"):
        pool_features(x, "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not apply"):
        pool_features(x, "cls")
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        pool_features(torch.ones(3))


# ------------------------------------------------------------------ RESQUE_task


def blobs(seed: int, k: int = 4, n_per: int = 30, d: int = 5, spread: float = 20.0):
    g = torch.Generator().manual_seed(seed)
    centers = spread * torch.randn(k, d, generator=g, dtype=torch.float64)
    y = torch.arange(k).repeat_interleave(n_per)
    return centers[y] + torch.randn(k * n_per, d, generator=g, dtype=torch.float64), y


def sklearn_resque_task(x: torch.Tensor, y: torch.Tensor) -> float:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    classes, inv = np.unique(y.numpy(), return_inverse=True)
    centroids = np.stack([x.numpy()[inv == i].mean(0) for i in range(len(classes))])
    km = KMeans(n_clusters=len(classes), init=centroids, n_init=1, max_iter=300, tol=1e-4).fit(x.numpy())
    return 1.0 - adjusted_rand_score(y.numpy(), km.labels_)


@pytest.mark.parametrize("seed", range(8))
def test_task_equals_sklearn_kmeans_and_ari(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    k = 2 + seed % 5
    x, y = blobs(seed, k=k, n_per=25, spread=float(torch.rand(1, generator=g)) * 3)  # overlapping
    y = torch.where(torch.rand(len(y), generator=g) < 0.2, torch.randint(0, k, y.shape, generator=g), y)
    assert float(resque_task(x, y)) == pytest.approx(sklearn_resque_task(x, y), abs=1e-12)


def test_adjusted_rand_index_equals_sklearn() -> None:
    from sklearn.metrics import adjusted_rand_score

    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        a, b = torch.randint(0, 4, (60,), generator=g), torch.randint(0, 6, (60,), generator=g)
        assert float(adjusted_rand_index(a, b)) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    assert float(adjusted_rand_index(a, 7 - a)) == 1.0


def test_task_separated_blobs_score_zero_and_invariances() -> None:
    x, y = blobs(0)
    assert float(resque_task(x, y)) == 0.0
    xo, yo = blobs(1, spread=0.7)
    base = float(resque_task(xo, yo))
    assert 0.2 < base < 1.2
    q = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64))[0]
    variants = {
        "permutation": resque_task(xo, torch.tensor([3, 1, 0, 2])[yo]),
        "label values": resque_task(xo, 10 * yo + 5),
        "scaling": resque_task(7.0 * xo, yo),
        "translation": resque_task(xo + 100.0, yo),
        "rotation": resque_task(xo @ q, yo),
        "determinism": resque_task(xo, yo),
    }
    for name, value in variants.items():
        assert float(value) == pytest.approx(base, abs=1e-9), name


def test_task_random_labels_near_one_and_range() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 8, generator=g)
    scores = [float(resque_task(x, torch.randint(0, 4, (600,), generator=g))) for _ in range(3)]
    assert all(0.9 < s < 1.1 for s in scores), scores
    assert all(0.0 <= s <= 1.5 for s in scores)


def test_task_blind_spot_parity_of_separated_classes() -> None:
    """Documented blind spot: parity of 10 separated blobs is linearly easy but scores as hard."""
    x, digit = blobs(3, k=10, n_per=20)
    assert float(resque_task(x, digit)) == 0.0
    assert float(resque_task(x, digit % 2)) > 0.5


def test_task_kmeanspp_option_and_errors() -> None:
    x, y = blobs(0)
    first = float(resque_task(x, y, init="k-means++", seed=1))
    assert first == float(resque_task(x, y, init="k-means++", seed=1))  # seeded, deterministic
    assert first == 0.0  # well-separated blobs are found from a k-means++ start too
    with pytest.raises(ValueError, match="at least 2 classes"):
        resque_task(x, torch.zeros(len(x), dtype=torch.int64))
    with pytest.raises(ValueError, match="'centroids' or 'k-means\\+\\+'"):
        resque_task(x, y, init="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN or inf"):
        resque_task(x * float("nan"), y)


def test_kmeans_relocates_an_emptied_cluster() -> None:
    x = torch.tensor([[0.0], [0.1], [0.2], [10.0]], dtype=torch.float64)
    labels = kmeans_lloyd(x, torch.tensor([[0.1], [50.0], [10.0]], dtype=torch.float64))
    assert sorted(set(labels.tolist())) == [0, 1, 2]  # the far-away start does not stay empty


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pooling": "max"}, r"`pooling` must be one of \(.*\), got 'max'\. HINT: pass pooling='default'"),
        ({"mode": "shift"}, r"`mode` must be 'auto' \(RESQUECheck\), 'dist' or 'task', got 'shift'\. HINT:"),
        ({"num_classes": None}, r"`num_classes` is required for mode='dist'.*HINT: pass num_classes="),
        ({"num_classes": 0}, r"`num_classes` must be an int >= 1 or None, got 0\. HINT:"),
        ({"label_source": "model"}, r"`label_source` must be 'target' or 'prediction', got 'model'\. HINT:"),
        ({"mode": "task", "label_source": "prediction"}, r"applies to mode='dist'.*HINT:"),
        (
            {"mode": "task", "reservoir_size": 0},
            r"`reservoir_size` must be a positive int or None, got 0\. HINT:",
        ),
        (
            {"mode": "task", "reservoir_size": 5, "num_classes": None},
            r"required with `reservoir_size`.*HINT:",
        ),
        ({"layer": ""}, r"`layer` must be the name of a layer.*got ''\. HINT:"),
    ],
)
def test_invalid_resque_config_raises_at_construction(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RESQUEConfig(**{"layer": "net.block2", "mode": "dist", "num_classes": 3, **options})


def test_resque_config_pools_like_pool_features() -> None:
    g = torch.Generator().manual_seed(0)
    conv, tokens = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 7, generator=g)
    for pooling in ("default", "flatten", "cls", "token_mean", "feature_mean"):
        config = RESQUEConfig("layer", "task", pooling=pooling)  # type: ignore[arg-type]
        assert torch.equal(config.pool(tokens), pool_features(tokens, pooling))  # type: ignore[arg-type]
        if pooling in ("default", "flatten", "feature_mean"):
            assert torch.equal(config.pool(conv), pool_features(conv, pooling))  # type: ignore[arg-type]
