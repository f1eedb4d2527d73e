"""Transferability metrics: streaming equals one-shot, merged rank states equal one process, errors."""

from __future__ import annotations

import pytest
import torch

from lightning_reuse.functional import h_score, knn_accuracy, leep, linear_probe_accuracy, logme, nce
from lightning_reuse.metrics import LEEP, NCE, HScore, KNNAccuracy, LinearProbeAccuracy, LogME
from tests.functional.test_transferability import make, slow_h_score, slow_leep, slow_logme, slow_nce


def _feed(metric, a: torch.Tensor, y: torch.Tensor, batch_size: int):
    for i in range(0, len(y), batch_size):
        metric.update(a[i : i + batch_size], y[i : i + batch_size])
    return metric


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_streaming_equals_one_shot_and_reference(seed: int, batch_size: int) -> None:
    f, y, probs = make(seed)
    z = probs.argmax(-1)
    cases = [
        (LogME(num_classes=3), f, logme(f, y), slow_logme(f.numpy(), y.numpy())),
        (HScore(num_classes=3), f, h_score(f, y), slow_h_score(f.numpy(), y.numpy())),
        (LEEP(num_classes=3), probs, leep(probs, y), slow_leep(probs.numpy(), y.numpy())),
        (NCE(num_classes=3, num_source=5), z, nce(z, y), slow_nce(z.numpy(), y.numpy())),
        (KNNAccuracy(k=3), f, knn_accuracy(f, y, k=3), None),
        (LinearProbeAccuracy(folds=4, seed=2), f, linear_probe_accuracy(f, y, folds=4, seed=2), None),
    ]
    for metric, data, one_shot, ref in cases:
        streamed = float(_feed(metric, data, y, batch_size).compute())
        assert streamed == pytest.approx(float(one_shot), rel=1e-9, abs=1e-12), type(metric).__name__
        if ref is not None:
            assert streamed == pytest.approx(ref, rel=1e-7), type(metric).__name__


def test_merged_rank_states_equal_one_process() -> None:
    """Sum / cat reductions: two "ranks" with disjoint shards merge into the single-process score."""
    f, y, probs = make(3)
    z = probs.argmax(-1)
    for make_metric, data in (
        (lambda: LogME(num_classes=3, num_features=6), f),
        (lambda: HScore(num_classes=3, num_features=6), f),
        (lambda: LEEP(num_classes=3), probs),
        (lambda: NCE(num_classes=3, num_source=5), z),
        (lambda: KNNAccuracy(k=1), f),
    ):
        single, rank0, rank1 = make_metric(), make_metric(), make_metric()
        single.update(data, y)
        rank0.update(data[::2], y[::2])
        rank1.update(data[1::2], y[1::2])
        rank0.merge_state(rank1)
        assert float(rank0.compute()) == pytest.approx(float(single.compute()), rel=1e-9)


def test_metric_errors_name_the_argument_and_hint() -> None:
    f, y, _ = make(0)
    with pytest.raises(ValueError, match="num_classes") as err:
        LogME(num_classes=0)
    assert "HINT:" in str(err.value)
    with pytest.raises(ValueError, match="out of range"):
        HScore(num_classes=2).update(f, y)
    metric = LogME(num_classes=3)
    metric.update(f, y)
    with pytest.raises(ValueError, match="width changed"):
        metric.update(f[:, :3], y)
    for empty in (KNNAccuracy(), LogME(num_classes=3)):
        with (
            pytest.warns(UserWarning, match="before the ``update``"),
            pytest.raises(ValueError, match="no samples"),
        ):
            empty.compute()
