"""RESQUE torchmetrics: streaming equals one-shot, state merging equals one process, reservoir bounds."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lightning_reuse.functional import resque_dist, resque_task
from lightning_reuse.functional.resque import RESQUEClassSkippedWarning
from lightning_reuse.metrics import RESQUEDist, RESQUETask
from tests.functional.test_resque import blobs, make_data, slow_resque_dist


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_dist_streaming_equals_one_shot_reference(batch_size: int) -> None:
    f, y, f2, y2 = make_data(2)
    metric = RESQUEDist(num_classes=4, return_per_class=True)
    for i in range(0, len(y), batch_size):
        metric.update(f[i : i + batch_size], y[i : i + batch_size])
    for i in range(0, len(y2), batch_size):
        metric.update(f2[i : i + batch_size], y2[i : i + batch_size], shifted=True)
    score, per_class = metric.compute()
    ref = slow_resque_dist(f.numpy(), y.numpy(), f2.numpy(), y2.numpy())
    assert float(score) == pytest.approx(ref, abs=1e-9)
    one_shot, one_shot_per_class = resque_dist(f, y, f2, y2, return_per_class=True)
    assert float(score) == pytest.approx(float(one_shot), abs=1e-12)
    torch.testing.assert_close(per_class, one_shot_per_class)
    assert metric.sums.dtype == torch.float64


def test_dist_merged_rank_states_equal_single_process() -> None:
    """Sum reduction: two "ranks" with disjoint shards merge into the single-process statistics."""
    f, y, f2, y2 = make_data(4)
    single, rank0, rank1 = (RESQUEDist(num_classes=4, num_features=6) for _ in range(3))
    single.update(f, y)
    single.update(f2, y2, shifted=True)
    rank0.update(f[::2], y[::2])
    rank0.update(f2[:5], y2[:5], shifted=True)
    rank1.update(f[1::2], y[1::2])
    rank1.update(f2[5:], y2[5:], shifted=True)
    rank0.merge_state(rank1)
    assert float(rank0.compute()) == pytest.approx(float(single.compute()), abs=1e-12)


def test_dist_metric_errors_reset_and_warning() -> None:
    f, y, f2, y2 = make_data(0)
    metric = RESQUEDist(num_classes=4)
    with pytest.raises(ValueError, match="no labels were given"):
        metric.update(f)
    bad = RESQUEDist(num_classes=4)
    bad.update(f * float("inf"), y)  # no host-device sync per batch: detected at compute
    bad.update(f2, y2, shifted=True)
    with pytest.raises(ValueError, match="original features contained NaN or inf"):
        bad.compute()
    out_of_range = RESQUEDist(num_classes=3)
    out_of_range.update(f, y)
    out_of_range.update(f2, y2, shifted=True)
    with pytest.raises(ValueError, match=r"samples had labels outside \[0, num_classes=3\)"):
        out_of_range.compute()
    metric.update(f, y)
    with pytest.raises(ValueError, match="no shifted samples"):
        metric.compute()
    with pytest.raises(ValueError, match="feature width changed from 6 to 3"):
        metric.update(f2[:, :3], y2, shifted=True)
    metric.update(f2[y2 != 0], y2[y2 != 0], shifted=True)
    with pytest.warns(RESQUEClassSkippedWarning, match=r"\[0\]"):
        assert 0.0 < float(metric.compute()) < 1.0
    metric.reset()
    assert metric.sums.shape == (4, 0) and float(metric.counts.sum()) == 0.0
    with pytest.raises(ValueError, match="num_classes"):
        RESQUEDist(num_classes=0)


def test_task_streaming_equals_one_shot() -> None:
    x, y = blobs(2, spread=0.8)
    metric = RESQUETask()
    for i in range(0, len(y), 16):
        metric.update(x[i : i + 16], y[i : i + 16])
    assert float(metric.compute()) == pytest.approx(float(resque_task(x, y)), abs=1e-12)
    big = RESQUETask(num_classes=4, reservoir_size=1000)  # reservoir larger than the data: everything kept
    big.update(x, y)
    assert float(big.compute()) == pytest.approx(float(resque_task(x, y)), abs=1e-12)


def test_task_reservoir_is_bounded_uniform_and_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (3000,), generator=g)
    x = 10.0 * y[:, None].double() + torch.randn(3000, 2, generator=g, dtype=torch.float64)
    metric = RESQUETask(num_classes=3, reservoir_size=40, seed=7)
    for i in range(0, 3000, 100):
        metric.update(x[i : i + 100], y[i : i + 100])
    assert metric.res_features.shape == (120, 2)
    assert metric.res_seen.tolist() == torch.bincount(y, minlength=3).tolist()
    assert (metric.res_labels >= 0).all()
    assert float(metric.compute()) == 0.0
    # uniform over the stream: kept samples are not just the first ones seen
    kept_first_half = sum(
        any(torch.equal(row, x[j]) for j in range(1500) if y[j] == int(lab))
        for row, lab in zip(metric.res_features, metric.res_labels)
    )
    assert 30 < kept_first_half < 90
    twin = copy.deepcopy(metric)
    twin.reset()
    for i in range(0, 3000, 100):
        twin.update(x[i : i + 100], y[i : i + 100])
    assert torch.equal(twin.res_features, metric.res_features)  # same seed, same sample
    with pytest.raises(ValueError, match="num_classes"):
        RESQUETask(reservoir_size=10)
    with pytest.raises(ValueError, match="saw no samples"), pytest.warns(UserWarning, match="before the"):
        RESQUETask().compute()
    with pytest.raises(ValueError, match="no labels"):
        RESQUETask().update(x)
    assert not math.isnan(float(resque_task(x, y)))
