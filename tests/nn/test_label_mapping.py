"""Label mappings: FLM against a slow count-matrix reference, one-to-one properties, ILM schedule, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_reuse.nn.label_mapping import (
    FrequencyLabelMapping,
    IterativeLabelMapping,
    LinearLabelMapping,
    OneToOneLabelMapping,
    RandomLabelMapping,
    count_matrix,
    greedy_one_to_one,
)


def slow_counts(source_pred: list[int], target: list[int], k_s: int, c: int) -> list[list[int]]:
    counts = [[0] * k_s for _ in range(c)]
    for s, t in zip(source_pred, target):
        counts[t][s] += 1
    return counts


def slow_greedy(counts: list[list[int]]) -> list[int]:
    """Visit all (count, source, target) entries by largest count (ties: smaller source, then target) and
    keep an entry when both its target row and source column are still free."""
    entries = sorted((-n, k, c) for c, row in enumerate(counts) for k, n in enumerate(row))
    mapping: dict[int, int] = {}
    used: set[int] = set()
    for _, k, c in entries:
        if c not in mapping and k not in used:
            mapping[c] = k
            used.add(k)
    return [mapping[c] for c in range(len(counts))]


@settings(max_examples=60, deadline=None)
@given(
    k_s=st.integers(1, 12),
    data=st.data(),
)
def test_flm_equals_slow_count_matrix_reference(k_s: int, data: st.DataObject) -> None:
    c = data.draw(st.integers(1, k_s))
    n = data.draw(st.integers(0, 60))
    source_pred = data.draw(st.lists(st.integers(0, k_s - 1), min_size=n, max_size=n))
    target = data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n))
    counts = count_matrix(
        torch.tensor(source_pred, dtype=torch.long), torch.tensor(target, dtype=torch.long), k_s, c
    )
    assert counts.tolist() == slow_counts(source_pred, target, k_s, c)
    flm = FrequencyLabelMapping(k_s, c)
    mapping = flm.fit(torch.tensor(source_pred, dtype=torch.long), torch.tensor(target, dtype=torch.long))
    assert mapping.tolist() == slow_greedy(slow_counts(source_pred, target, k_s, c))
    assert len(set(mapping.tolist())) == c  # one-to-one
    assert flm.counts.tolist() == counts.tolist() and flm.num_fits == 1


def test_greedy_takes_largest_count_first() -> None:
    counts = torch.tensor([[5, 9, 0], [0, 10, 1]])
    # 10 -> (1, 1) first; then row 0 takes the best free column: 5 -> (0, 0)
    assert greedy_one_to_one(counts).tolist() == [0, 1]
    assert slow_greedy(counts.tolist()) == [0, 1]
    # a tie between (target 0, source 2) and (target 1, source 0): the smaller source index wins first
    assert greedy_one_to_one(torch.tensor([[0, 0, 4], [4, 0, 4]])).tolist() == [2, 0]
    assert greedy_one_to_one(torch.tensor([[4, 0, 0], [4, 0, 0]])).tolist() == [0, 1]


def test_flm_accepts_logits_like_predictions() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g)
    target = torch.randint(0, 4, (50,), generator=g)
    a = FrequencyLabelMapping(7, 4).fit(logits, target)
    b = FrequencyLabelMapping(7, 4).fit(logits.argmax(-1), target)
    assert torch.equal(a, b)


def test_one_to_one_forward_is_the_matrix_product() -> None:
    m = RandomLabelMapping(9, 4, seed=3)
    logits = torch.randn(5, 9)
    torch.testing.assert_close(m(logits), logits @ m.matrix().T)
    assert torch.equal(m(logits), logits[:, m.mapping])
    assert len(set(m.mapping.tolist())) == 4
    assert not list(m.parameters())  # nothing trains


def test_rlm_seeded() -> None:
    assert torch.equal(
        RandomLabelMapping(100, 10, seed=1).mapping, RandomLabelMapping(100, 10, seed=1).mapping
    )
    assert not torch.equal(
        RandomLabelMapping(100, 10, seed=1).mapping, RandomLabelMapping(100, 10, seed=2).mapping
    )


def test_ilm_schedule() -> None:
    ilm = IterativeLabelMapping(10, 3, remap_every=3)
    assert [e for e in range(10) if ilm.due(e)] == [0, 3, 6, 9]
    assert ilm.data_driven and not RandomLabelMapping(10, 3).data_driven
    with pytest.raises(ValueError, match="`remap_every` must be an int >= 1"):
        IterativeLabelMapping(10, 3, remap_every=0)


def test_linear_mapping_trains_and_allows_more_targets() -> None:
    m = LinearLabelMapping(3, 5)
    assert m(torch.randn(2, 3)).shape == (2, 5)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 3 * 5 + 5
    assert m.matrix().shape == (5, 3)


def test_state_dict_round_trip_keeps_the_mapping() -> None:
    flm = FrequencyLabelMapping(6, 3)
    flm.fit(torch.tensor([5, 5, 4, 2]), torch.tensor([0, 0, 1, 2]))
    fresh = FrequencyLabelMapping(6, 3)
    fresh.load_state_dict(flm.state_dict())
    assert fresh.mapping.tolist() == flm.mapping.tolist() == [5, 4, 2]


@pytest.mark.parametrize(
    "cls", [OneToOneLabelMapping, RandomLabelMapping, FrequencyLabelMapping, IterativeLabelMapping]
)
def test_more_target_classes_than_source_classes_is_refused(cls) -> None:
    with pytest.raises(
        ValueError, match=r"num_target <= num_source.*num_target=12.*num_source=10.*LinearLabelMapping"
    ):
        cls(10, 12)


def test_bad_inputs_raise_clear_errors() -> None:
    m = FrequencyLabelMapping(10, 3)
    with pytest.raises(ValueError, match=r"expects source logits \[N, 10\], got \[2, 9\]"):
        m(torch.zeros(2, 9))
    with pytest.raises(ValueError, match=r"`target` labels must lie in \[0, 3\)"):
        m.fit(torch.tensor([1, 2]), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="one entry per sample"):
        m.fit(torch.tensor([1, 2, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="distinct source indices"):
        OneToOneLabelMapping(10, 3, mapping=[1, 1, 2])
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        OneToOneLabelMapping(10, 2, mapping=[1, 10])
    with pytest.raises(ValueError, match=r"`counts` must be \[3, 10\]"):
        m.fit_counts(torch.zeros(10, 3))
