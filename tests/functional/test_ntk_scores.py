"""Screening scores against dense, obviously-correct formulas, and their invariances."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from lightning_reuse.functional import ScreeningConfig
from lightning_reuse.functional.ntk import features_to_kernel, prompt_jacobian
from lightning_reuse.functional.ntk_scores import (
    ScreeningThresholds,
    decide,
    residual_at_init,
    screening_scores,
    source_guard,
    stratified_subset,
)

D = torch.float64


def reference_scores(k: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, perms: list[torch.Tensor]):
    """q, rho, E(100) over the full spectrum, r_eff: straight from the formulas (dense inverse, eigh)."""
    dim = k.shape[0]
    lam_bar = torch.trace(k) / dim
    inv = torch.linalg.inv(k + 1e-2 * lam_bar * torch.eye(dim, dtype=D))

    def q(yy: torch.Tensor) -> float:
        r = residual_at_init(logits, yy).flatten()
        return float(lam_bar * r @ inv @ r / (r @ r))

    rho = q(y) / (sum(q(y[p]) for p in perms) / len(perms))
    vals, vecs = torch.linalg.eigh(k)
    r = residual_at_init(logits, y).flatten()
    e = 1 - float((torch.exp(-200 * vals.clamp_min(0) / lam_bar) * (vecs.T @ r) ** 2).sum() / (r @ r))
    r_eff = float(torch.trace(k) ** 2 / (k * k).sum() / dim)
    return q(y), rho, e, r_eff


def cnn_features(n: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt-NTK features [n, C, P] and logits of a small random CNN on random inputs."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(64, c)).to(D).eval()
    jac = prompt_jacobian(net, torch.rand(n, 1, 4, 4, dtype=D))
    return jac.phi, jac.logits


def _perms(n: int, seed: int, count: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g) for _ in range(count)]


def test_scores_match_dense_reference() -> None:
    phi, logits = cnn_features(30, 3)
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(5))
    k = features_to_kernel(phi)
    s = screening_scores(k, logits, y, num_permutations=6, top_k=90, seed=3)
    q, rho, e, r_eff = reference_scores(k, logits, y, _perms(30, 3, 6))
    assert s.q_true == pytest.approx(q, rel=1e-8)
    assert s.rho == pytest.approx(rho, rel=1e-8)
    assert s.e_tau == pytest.approx(e, abs=1e-8)
    assert s.r_eff == pytest.approx(r_eff, rel=1e-10)
    assert s.lam_bar == pytest.approx(float(torch.trace(k)) / 90)
    assert len(s.eigenvalues) == 90 and s.eigenvalues == sorted(s.eigenvalues, reverse=True)


def test_feature_path_cg_and_randomized_topk_match_dense_path() -> None:
    torch.manual_seed(0)
    n, c, s_dim = 60, 4, 50  # dim 240 > s: matrix-free CG + randomized top-k
    phi = torch.randn(n, c, s_dim, dtype=D) * torch.linspace(2, 0.05, s_dim, dtype=D)
    logits = torch.randn(n, c, dtype=D)
    y = torch.randint(0, c, (n,))
    a = screening_scores(phi, logits, y, top_k=10, max_exact=10)  # matrix-free
    b = screening_scores(features_to_kernel(phi), logits, y, top_k=10, max_exact=10)  # dense, Cholesky
    c = screening_scores(phi, logits, y, top_k=10)  # exact, from the Gram matrix
    assert c.exact_spectrum and not a.exact_spectrum
    assert c.rho == pytest.approx(b.rho, rel=1e-8)
    assert a.rho == pytest.approx(b.rho, rel=1e-6)
    assert a.e_tau == pytest.approx(b.e_tau, rel=2e-2)  # slowly decaying spectrum: subspace error
    assert a.e_tau <= c.e_tau + 1e-9  # top-k E is a lower bound of the exact one
    assert a.r_eff == pytest.approx(b.r_eff, rel=1e-10)
    torch.testing.assert_close(torch.tensor(a.eigenvalues), torch.tensor(b.eigenvalues), rtol=1e-3, atol=0)


def test_scores_invariant_to_kernel_scale() -> None:
    phi, logits = cnn_features(25, 3, seed=1)
    y = torch.randint(0, 3, (25,))
    a = screening_scores(phi, logits, y)
    b = screening_scores(7.0 * phi, logits, y)  # K -> 49 K
    assert (a.rho, a.e_tau, a.r_eff) == pytest.approx((b.rho, b.e_tau, b.r_eff), rel=1e-8)
    assert b.lam_bar == pytest.approx(49 * a.lam_bar)


def test_shuffled_labels_give_rho_near_one() -> None:
    phi, logits = cnn_features(200, 4, seed=2)
    rhos = []
    for seed in range(3):
        y = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(100 + seed))
        rhos.append(screening_scores(phi, logits, y, num_permutations=8, seed=seed).rho)
    assert all(abs(r - 1) <= 0.05 for r in rhos), rhos


def test_labels_aligned_with_kernel_give_small_rho_and_pass() -> None:
    torch.manual_seed(0)
    n, c = 80, 4
    y = torch.arange(n) % c
    # Each sample's rows carry its class: the kernel separates classes, so true labels are easy.
    phi = torch.zeros(n, c, c * c, dtype=D)
    for a in range(c):  # K[(i,a),(j,b)] = [a == b][y_i == y_j]
        phi[torch.arange(n), a, a * c + y] = 1.0
    phi += 0.05 * torch.randn_like(phi)
    s = screening_scores(phi, torch.zeros(n, c, dtype=D), y)
    assert s.rho < 0.5 and s.decision == "PASS", s


def test_pseudo_ntk_equals_full_kernel_of_kron_form() -> None:
    phi, logits = cnn_features(20, 3, seed=3)
    kp = features_to_kernel(phi.sum(1))  # any n x n PSD kernel
    y = torch.randint(0, 3, (20,))
    full = screening_scores(torch.kron(kp, torch.eye(3, dtype=D)), logits, y, top_k=60)
    pseudo = screening_scores(kp, logits, y, pseudo=True, top_k=20)
    assert pseudo.rho == pytest.approx(full.rho, rel=1e-8)
    assert pseudo.e_tau == pytest.approx(full.e_tau, rel=1e-8)
    assert pseudo.r_eff == pytest.approx(full.r_eff, rel=1e-8)


def test_source_guard_extremes() -> None:
    y = torch.arange(40) % 4
    conf, nmi, counts = source_guard(torch.zeros(40, 10), y, 4)
    assert conf == pytest.approx(1.0) and nmi == pytest.approx(0.0) and counts.sum() == 40
    conf, nmi, _ = source_guard(10 * nn.functional.one_hot(y + 3, 10).float(), y, 4)
    assert conf > 9 and nmi == pytest.approx(1.0)


def test_stratified_subset_keeps_proportions() -> None:
    y = torch.cat([torch.zeros(600), torch.ones(300), torch.full((100,), 2)]).long()
    idx = stratified_subset(y, 100, seed=1)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100
    assert torch.bincount(y[idx]).tolist() == [60, 30, 10]
    y2 = torch.tensor([0] * 50 + [1])
    assert torch.bincount(y2[stratified_subset(y2, 5)]).tolist() == [4, 1]  # rare class kept


def test_decision_rules_and_reasons() -> None:
    t = ScreeningThresholds.spec()
    assert decide(0.5, 0.9, (5.0, 0.5), t)[0] == "PASS"
    d, reasons = decide(0.97, 0.9, None, t)
    assert d == "FAIL" and "rho=0.970" in reasons[0]
    assert decide(0.9, 0.9, None, t)[0] == "WARN"
    assert decide(0.5, 0.1, None, t)[0] == "WARN"
    d, reasons = decide(0.5, 0.9, (1.01, 0.5), t)
    assert d == "FAIL" and "near-uniform" in reasons[0]
    assert decide(0.5, 0.9, (5.0, 0.0), t)[0] == "FAIL"
    default = ScreeningThresholds()  # calibrated rule: the NTK-predicted accuracy
    assert decide(2.0, 0.0, (1.0, 0.0), default, ntk_accuracy_norm=0.9)[0] == "PASS"
    d, reasons = decide(0.1, 1.0, None, default, ntk_accuracy_norm=0.1)
    assert d == "FAIL" and "NTK score 0.100 < 0.25" in reasons[0]
    assert decide(0.1, 1.0, None, default, ntk_accuracy_norm=default.ntk_accuracy_fail + 0.01)[0] == "WARN"


def test_crossfit_accuracy_matches_explicit_kernel_ridge() -> None:
    phi, logits = cnn_features(40, 3, seed=4)
    y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(2))
    k = features_to_kernel(phi)
    s_feat = screening_scores(phi, logits, y, seed=7)
    s_dense = screening_scores(k, logits, y, seed=7)
    # Reference: explicit kernel ridge on the residual, two folds (same split as the implementation).
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(8))
    folds, correct = [perm[:20], perm[20:]], 0
    r0 = residual_at_init(logits, y)
    for a, b in (folds, folds[::-1]):
        ra = (a[:, None] * 3 + torch.arange(3)).flatten()
        rb = (b[:, None] * 3 + torch.arange(3)).flatten()
        kaa = k[ra][:, ra]
        mu = 1e-2 * torch.trace(kaa) / len(ra)
        delta = k[rb][:, ra] @ torch.linalg.inv(kaa + mu * torch.eye(len(ra), dtype=D)) @ r0[a].flatten()
        correct += int(((logits[b].softmax(-1) + delta.view(20, 3)).argmax(-1) == y[b]).sum())
    assert s_feat.ntk_accuracy == pytest.approx(correct / 40)
    assert s_dense.ntk_accuracy == pytest.approx(correct / 40)
    assert s_feat.ntk_accuracy_norm == pytest.approx((correct / 40 - 1 / 3) / (2 / 3))


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="`y` must have shape"):
        screening_scores(torch.ones(4, 2, 3), torch.zeros(4, 2), torch.zeros(5).long())
    with pytest.raises(ValueError, match="kernel is zero"):
        screening_scores(torch.zeros(4, 2, 3), torch.zeros(4, 2), torch.zeros(4).long())


def test_source_gate_scales_the_ntk_accuracy() -> None:
    phi, logits = cnn_features(30, 3, seed=5)
    y = torch.arange(30) % 3
    plain = screening_scores(phi, logits, y)
    assert plain.source_gate == 1.0 and plain.ntk_score == plain.ntk_accuracy_norm
    uniform = screening_scores(phi, logits, y, source_logits=torch.zeros(30, 10))
    assert uniform.source_gate == 0.0 and uniform.ntk_score == 0.0 and uniform.decision == "FAIL"
    # confidence 1.25x uniform -> gate (1.25 - 1) / (1.5 - 1) = 0.5
    p = torch.full((30, 10), 0.875 / 9)
    p[:, 0] = 0.125
    half = screening_scores(phi, logits, y, source_logits=p.log())
    assert half.source_gate == pytest.approx(0.5)
    assert half.ntk_score == pytest.approx(0.5 * half.ntk_accuracy_norm)


def test_stratified_subset_with_many_rare_classes_keeps_every_class() -> None:
    y = torch.tensor([0] * 100 + list(range(1, 10)))  # one large class, nine singletons
    for n in (10, 14, 50):
        idx = stratified_subset(y, n)
        assert len(idx) == n and len(set(idx.tolist())) == n
        counts = torch.bincount(y[idx], minlength=10)
        assert (counts >= 1).all() and counts[0] == n - 9  # the excess comes out of the large class
    with pytest.raises(ValueError, match=r"`n` must be at least the number of classes present \(10\)"):
        stratified_subset(y, 5)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # random class sizes: exactly n distinct indices, every class present
        sizes = torch.randint(1, 40, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g)
        yy = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        n = int(torch.randint(len(sizes), len(yy), (1,), generator=g))
        idx = stratified_subset(yy, n, seed=3)
        assert len(set(idx.tolist())) == len(idx) == n
        assert set(yy[idx].tolist()) == set(range(len(sizes)))


def test_each_ntk_accuracy_threshold_applies_on_its_own() -> None:
    warn_only = ScreeningThresholds(ntk_accuracy_fail=None, ntk_accuracy_warn=0.45)
    d, reasons = decide(0.1, 1.0, None, warn_only, ntk_accuracy_norm=0.1)
    assert d == "WARN" and "NTK score 0.100 < 0.45" in reasons[0]
    assert decide(0.1, 1.0, None, warn_only, ntk_accuracy_norm=0.9)[0] == "PASS"
    fail_only = ScreeningThresholds(ntk_accuracy_fail=0.25, ntk_accuracy_warn=None)
    assert decide(0.1, 1.0, None, fail_only, ntk_accuracy_norm=0.1)[0] == "FAIL"
    assert decide(0.1, 1.0, None, fail_only, ntk_accuracy_norm=0.3)[0] == "PASS"
    neither = ScreeningThresholds(ntk_accuracy_fail=None, ntk_accuracy_warn=None)
    assert decide(0.1, 1.0, None, neither, ntk_accuracy_norm=0.0) == ("PASS", ["no rule enabled"])


def test_auto_sketch_keeps_exact_rows_when_sketching_would_not_shrink_them() -> None:
    from lightning_reuse.functional.ntk_scores import screen_reprogramming
    from lightning_reuse.nn.label_mapping import FrequencyLabelMapping
    from lightning_reuse.nn.prompts import PaddingPrompt
    from lightning_reuse.nn.reprogrammed import ReprogrammedModel
    from lightning_reuse.samples.models import SmallCNN

    torch.manual_seed(0)  # padding prompt 6x6 -> 8x8: P_m = 64 - 36 = 28 trainable input entries
    model = ReprogrammedModel(
        SmallCNN(width=4), PaddingPrompt((1, 6, 6), (1, 8, 8)), FrequencyLabelMapping(10, 3)
    )
    x, y = torch.rand(30, 1, 6, 6, generator=torch.Generator().manual_seed(1)), torch.arange(30) % 3

    def run(sketch: str, sketch_dim: int):  # max_exact_entries=1: "auto" cannot keep rows for their size
        return screen_reprogramming(
            model, x, y, sketch=sketch, sketch_dim=sketch_dim, max_exact_entries=1, top_k=8
        )

    exact, auto_wide = run("none", 64), run("auto", 64)  # sketch_dim 64 >= P_m 28: nothing to save
    assert auto_wide.eigenvalues == exact.eigenvalues and auto_wide.rho == exact.rho
    assert run("countsketch", 64).eigenvalues != exact.eigenvalues  # a sketch would have changed them
    assert run("auto", 8).eigenvalues == run("countsketch", 8).eigenvalues  # P_m > sketch_dim: sketch


# --------------------------------------------------------------------------- ScreeningConfig
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("top_k", 0, r"`top_k` must be an int >= 1, got 0\. HINT: pass top_k=64"),
        ("num_samples", 2.5, r"`num_samples` must be an int >= 1, got 2\.5\. HINT: pass num_samples=512"),
        ("num_permutations", True, r"`num_permutations` must be an int >= 1, got True\. HINT:"),
        ("sketch", "fft", r"`sketch` must be one of \('auto', .*\), got 'fft'\. HINT: pass sketch='auto'"),
        ("label_mapping", "ilm", r"`label_mapping` must be one of \('flm', 'model'\), got 'ilm'\. HINT:"),
        ("eps", 0.0, r"`eps` must be a number > 0, got 0\.0\. HINT: pass eps=0\.01"),
        ("tau", -1, r"`tau` must be a number > 0, got -1\. HINT:"),
        ("pseudo", "yes", r"`pseudo` must be a bool, got 'yes'\. HINT:"),
        ("thresholds", {"rho_fail": 0.9}, r"`thresholds` must be a ScreeningThresholds, got dict\. HINT:"),
    ],
)
def test_invalid_screening_config_raises_at_construction(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScreeningConfig(**{field: value})


def test_invalid_gate_confidence_raises_at_construction() -> None:
    with pytest.raises(ValueError, match=r"`gate_confidence` must be a number > 1.*got 1\.0\. HINT:"):
        ScreeningThresholds(gate_confidence=1.0)


def test_keyword_options_and_config_give_identical_scores() -> None:
    phi, logits = cnn_features(30, 3, seed=6)
    y = torch.arange(30) % 3
    options = {"top_k": 12, "num_permutations": 5, "eps": 0.05, "tau": 30.0, "seed": 2, "max_exact": 8}
    by_keywords = screening_scores(phi, logits, y, **options)
    by_config = screening_scores(phi, logits, y, config=ScreeningConfig(**options))
    assert by_keywords == by_config and not by_config.exact_spectrum
    assert screening_scores(phi, logits, y) == screening_scores(phi, logits, y, config=ScreeningConfig())


def test_config_and_keywords_together_or_unknown_options_are_refused() -> None:
    phi, logits = cnn_features(10, 3, seed=7)
    y = torch.arange(10) % 3
    with pytest.raises(ValueError, match=r"both `config=` and the options \['top_k'\]\. HINT:"):
        screening_scores(phi, logits, y, config=ScreeningConfig(), top_k=4)
    with pytest.raises(TypeError, match=r"unknown screening options \['topk'\].*HINT:"):
        screening_scores(phi, logits, y, topk=4)
    with pytest.raises(ValueError, match=r"`config` must be a ScreeningConfig, got dict\. HINT:"):
        screening_scores(phi, logits, y, config={"top_k": 4})  # type: ignore[arg-type]


class CountingConfig(ScreeningConfig):
    """A ScreeningConfig that counts its validations."""

    validations = 0

    def __post_init__(self) -> None:
        type(self).validations += 1
        super().__post_init__()


def test_screen_reprogramming_validates_the_config_once_and_is_frozen() -> None:
    import dataclasses

    from lightning_reuse.functional.ntk_scores import screen_reprogramming
    from lightning_reuse.nn.label_mapping import FrequencyLabelMapping
    from lightning_reuse.nn.prompts import PaddingPrompt
    from lightning_reuse.nn.reprogrammed import ReprogrammedModel
    from lightning_reuse.samples.models import SmallCNN

    torch.manual_seed(0)
    model = ReprogrammedModel(
        SmallCNN(width=4), PaddingPrompt((1, 6, 6), (1, 8, 8)), FrequencyLabelMapping(10, 3)
    )
    x, y = torch.rand(30, 1, 6, 6, generator=torch.Generator().manual_seed(1)), torch.arange(30) % 3
    CountingConfig.validations = 0
    config = CountingConfig(num_samples=24, top_k=8)
    scores = screen_reprogramming(model, x, y, config=config)
    assert CountingConfig.validations == 1  # passed through to screening_scores, never rebuilt
    assert scores == screen_reprogramming(model, x, y, num_samples=24, top_k=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.top_k = 0  # type: ignore[misc]


# --- degenerate data: a clear error or FAIL with the reason, never PASS ----------------------------------------
def _reprogrammed(num_target: int = 3) -> nn.Module:
    from lightning_reuse.nn.label_mapping import FrequencyLabelMapping
    from lightning_reuse.nn.prompts import PaddingPrompt
    from lightning_reuse.nn.reprogrammed import ReprogrammedModel
    from lightning_reuse.samples.models import SmallCNN

    torch.manual_seed(0)
    source = SmallCNN(width=4)
    return ReprogrammedModel(
        source, PaddingPrompt((1, 6, 6), (1, 8, 8)), FrequencyLabelMapping(10, num_target)
    )


def _images(n: int = 60) -> torch.Tensor:
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("n", "labels", "reason"),
    [
        (1, [1], r"only 1 target sample screened"),
        (60, [0] * 60, r"only one class present among the 30 screened samples \(label 0\)"),
    ],
    ids=["one-sample", "one-class-present"],
)
def test_degenerate_targets_fail_with_the_reason(n: int, labels: list[int], reason: str) -> None:
    from lightning_reuse.functional import screen_reprogramming

    s = screen_reprogramming(_reprogrammed(), _images(n), torch.tensor(labels), num_samples=30)
    assert s.decision == "FAIL" and s.degenerate
    assert len(s.reasons) == 1 and re.search(reason, s.reasons[0])
    assert s.n == min(n, 30) and s.num_classes == 3 and s.eigenvalues == []
    assert all(v != v for v in (s.rho, s.e_tau, s.r_eff))  # NaN: nothing was computed
    assert s.metrics()["ntk/decision"] == 2.0


def test_screening_scores_on_degenerate_labels_fail_never_pass() -> None:
    phi, logits = cnn_features(6, 3)
    y = torch.tensor([2, 2, 2, 2, 2, 2])
    s = screening_scores(phi, logits, y, thresholds=ScreeningThresholds(None, None))  # no rule: would PASS
    assert s.decision == "FAIL" and "only one class present" in s.reasons[0]
    s = screening_scores(phi[:1], logits[:1], torch.tensor([0]))
    assert s.decision == "FAIL" and "only 1 target sample" in s.reasons[0]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.arange(60) % 5, r"labels must lie in \[0, 3\).*range \[0, 4\]\. HINT: .*num_target=5"),
        (torch.arange(60) % 3 - 1, r"labels must lie in \[0, 3\).*range \[-1, 1\]\. HINT: relabel"),
        ((torch.arange(60) % 3).float(), r"1-D integer tensor \[n\], got dtype torch.float32.*HINT:"),
    ],
    ids=["above-range", "negative", "float"],
)
def test_labels_out_of_range_are_refused_before_anything_is_computed(
    labels: torch.Tensor, message: str
) -> None:
    from lightning_reuse.functional import screen_reprogramming

    with pytest.raises(ValueError, match=message):
        screen_reprogramming(_reprogrammed(), _images(), labels, num_samples=30)


def test_one_class_label_mapping_is_refused_with_a_fix() -> None:
    from lightning_reuse.functional import screen_reprogramming

    with pytest.raises(ValueError, match=r"label mapping has 1 target class, expected at least 2.*HINT:"):
        screen_reprogramming(_reprogrammed(num_target=1), _images(), torch.zeros(60, dtype=torch.long))
    phi, logits = cnn_features(6, 1)
    with pytest.raises(ValueError, match=r"1 target class, expected at least 2"):
        screening_scores(phi, logits, torch.zeros(6, dtype=torch.long))


def test_screening_scores_refuses_labels_outside_the_logit_columns() -> None:
    phi, logits = cnn_features(6, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\) .*got range \[0, 3\]"):
        screening_scores(phi, logits, torch.tensor([0, 1, 2, 3, 0, 1]))


def test_token_inputs_are_refused_naming_what_is_supported() -> None:
    from lightning_reuse.functional import screen_reprogramming

    tokens = torch.randint(0, 100, (60, 6), generator=torch.Generator().manual_seed(0))
    with pytest.raises(
        TypeError, match=r"image inputs only.*torch.int64.*Token-sequence sources.*not supported.*HINT:"
    ):
        screen_reprogramming(_reprogrammed(), tokens, torch.arange(60) % 3, num_samples=30)


def test_two_classes_of_three_still_screen() -> None:
    from lightning_reuse.functional import screen_reprogramming

    s = screen_reprogramming(_reprogrammed(), _images(), torch.arange(60) % 2, num_samples=30)
    assert not s.degenerate and s.rho == s.rho and s.num_classes == 3
