"""What the NTK screening accepts: its options (:class:`ScreeningConfig`, validated once) and its data.

Data: :func:`check_inputs` (float images; token ids are refused), :func:`check_labels` (integer labels in
``[0, C)`` with ``C >= 2``: an error before anything is computed) and :func:`degenerate_reasons` (one
sample, or one class present: the screening answers FAIL with the reason, never PASS).

Following PEFT's config pattern: one dataclass holds every option of a part, checks them in
``__post_init__`` and is passed through unchanged, from :class:`~lightning_reuse.NTKScreening` to
:func:`~lightning_reuse.functional.screen_reprogramming` to
:func:`~lightning_reuse.functional.screening_scores`. :class:`ScreeningThresholds` holds the decision rule.

Example:
    >>> config = ScreeningConfig(num_samples=256, pseudo=True)
    >>> config.num_samples, config.sketch, config.thresholds.ntk_accuracy_fail
    (256, 'auto', 0.25)
    >>> ScreeningConfig(top_k=0)
    Traceback (most recent call last):
    ...
    ValueError: `top_k` must be an int >= 1, got 0. HINT: pass top_k=64 (the default) or another int >= 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "LABEL_MAPPINGS",
    "SKETCHES",
    "ScreeningConfig",
    "ScreeningThresholds",
    "check_inputs",
    "check_labels",
    "degenerate_reasons",
    "resolve_config",
]

LabelMappingKind = Literal["flm", "model"]
SketchKind = Literal["auto", "none", "gaussian", "countsketch"]
LABEL_MAPPINGS: tuple[str, ...] = ("flm", "model")
SKETCHES: tuple[str, ...] = ("auto", "none", "gaussian", "countsketch")


@dataclass(frozen=True)
class ScreeningThresholds:
    """Decision thresholds; a rule set to ``None`` is off. Defaults calibrated on the digits benchmark.

    The primary score is ``ntk_score = ntk_accuracy_norm * gate``: the cross-fitted NTK-predicted
    accuracy (0 = chance, 1 = perfect) times the source gate ``clip((confidence - 1) /
    (gate_confidence - 1), 0, 1)`` (the source's mean max-softmax in units of the uniform level
    ``1/K_s``: a near-uniform source has nothing to offer, claim 2 of Chung et al.).
    FAIL if ``ntk_score < ntk_accuracy_fail``, ``rho >= rho_fail``, ``confidence < min_confidence`` or
    ``nmi < min_nmi``; WARN if ``ntk_score < ntk_accuracy_warn``, ``rho >= rho_warn`` or
    ``E(tau) < e_warn``; else PASS.
    :meth:`spec` gives the specification's initial rho/E/guard rule, which the benchmark found
    unreliable (``docs/ntk_screening.md``).

    Raises:
        ValueError: If ``gate_confidence <= 1`` (the gate divides by ``gate_confidence - 1``).
    """

    ntk_accuracy_fail: float | None = 0.25
    ntk_accuracy_warn: float | None = 0.45
    gate_confidence: float = 1.5
    rho_fail: float | None = None
    rho_warn: float | None = None
    e_warn: float | None = None
    min_confidence: float | None = None
    min_nmi: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.gate_confidence, (int, float)) or not self.gate_confidence > 1:
            raise ValueError(
                f"`gate_confidence` must be a number > 1 (in units of the uniform level), got "
                f"{self.gate_confidence!r}. HINT: pass gate_confidence=1.5 (the default)."
            )

    @classmethod
    def spec(cls) -> ScreeningThresholds:
        """The initial rule of the specification: rho 0.95 / 0.85, E(100) 0.35, guard 1.5x uniform, NMI 0.05."""
        return cls(None, None, rho_fail=0.95, rho_warn=0.85, e_warn=0.35, min_confidence=1.5, min_nmi=0.05)


_POSITIVE_INTS = ("num_samples", "sketch_dim", "max_exact_entries", "max_exact", "batch_size", "top_k")
_CHOICES = {"label_mapping": LABEL_MAPPINGS, "sketch": SKETCHES}


@dataclass(frozen=True)
class ScreeningConfig:
    """Every option of the NTK screening (Chung et al. 2025; scores from Arora et al. 2019).

    Validated once, at construction; frozen, so it stays valid while it is passed through.

    Args:
        num_samples: Size of the stratified subset screened (the specification's default 512).
        label_mapping: ``"flm"``: the frequency mapping of the source's top-1 predictions on the subset
            (what FLM/ILM training starts from); ``"model"``: the model's mapping as it is.
        pseudo: Use the ``n x n`` pseudo-NTK (one backward per batch; for many target classes) instead of
            the ``nC x nC`` NTK.
        sketch: ``"auto"`` (exact rows if ``rows x P_m <= max_exact_entries`` or ``P_m <= sketch_dim``,
            else CountSketch), ``"none"``, ``"gaussian"`` or ``"countsketch"``.
        sketch_dim: Columns after sketching.
        max_exact_entries: Largest exact feature matrix (entries) kept by ``sketch="auto"``.
        max_exact: Exact spectrum (eigh of the ``s x s`` Gram matrix, or of ``K`` when dense) up to this
            size; beyond it, randomized top-k eigenpairs and conjugate gradients.
        batch_size: Samples per forward/backward pass.
        top_k: Eigenvalues reported (and used by ``E(tau)`` when the spectrum is not exact).
        num_permutations: Label permutations for the denominator of ``rho``.
        eps: Ridge ``eps * lam_bar`` of ``rho`` and of the NTK-predicted accuracy.
        tau: Training time of ``E(tau)``, in units of ``1 / lam_bar``.
        seed: Seed of the subset, the sketch, the permutations and the randomized eigensolver.
        thresholds: Decision thresholds (default :class:`ScreeningThresholds`).
        baselines: Also report the field's cheap baselines on the screened samples, from the same forward
            pass (:attr:`ScreeningScores.baselines`): the zero-step accuracy (through the screening's head), a cross-fitted linear
            probe and LogME on the source logits.

    Raises:
        ValueError: An option out of range; the message names the field, the value and a fix.
    """

    num_samples: int = 512
    label_mapping: LabelMappingKind = "flm"
    pseudo: bool = False
    sketch: SketchKind = "auto"
    sketch_dim: int = 4096
    max_exact_entries: int = 2**26
    max_exact: int = 4096
    batch_size: int = 128
    top_k: int = 64
    num_permutations: int = 8
    eps: float = 1e-2
    tau: float = 100.0
    seed: int = 0
    thresholds: ScreeningThresholds = field(default_factory=ScreeningThresholds)
    baselines: bool = True

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"`{name}` must be one of {allowed}, got {value!r}. HINT: pass {name}="
                    f"{_default(name)!r} (the default) or another of {allowed}."
                )
        for name in (*_POSITIVE_INTS, "num_permutations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{name}` must be an int >= 1, got {value!r}. HINT: pass {name}={_default(name)} "
                    "(the default) or another int >= 1."
                )
        for name in ("eps", "tau"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(
                    f"`{name}` must be a number > 0, got {value!r}. HINT: pass {name}={_default(name)} "
                    "(the default) or another positive number."
                )
        self._check_types()

    def _check_types(self) -> None:
        for name in ("pseudo", "baselines"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"`{name}` must be a bool, got {getattr(self, name)!r}. HINT: pass {name}=True or False."
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"`seed` must be an int, got {self.seed!r}. HINT: pass seed=0 (the default).")
        if not isinstance(self.thresholds, ScreeningThresholds):
            raise ValueError(
                f"`thresholds` must be a ScreeningThresholds, got {type(self.thresholds).__name__}. "
                "HINT: pass thresholds=ScreeningThresholds(...) (or leave it out for the default rule)."
            )


def _default(name: str) -> Any:
    return ScreeningConfig.__dataclass_fields__[name].default


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(ScreeningConfig))


def resolve_config(config: ScreeningConfig | None, options: dict[str, Any], who: str) -> ScreeningConfig:
    """The config of a call: ``config`` as given, or one built from keyword ``options`` (not both).

    Raises:
        TypeError: An option that is not a field of :class:`ScreeningConfig`.
        ValueError: Both ``config`` and options, or an invalid option.
    """
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(
            f"{who} got unknown screening options {unknown}; the options are {list(OPTION_NAMES)}. "
            "HINT: check the spelling, or pass `config=ScreeningConfig(...)`."
        )
    if config is None:
        return ScreeningConfig(**options)
    if options:
        raise ValueError(
            f"{who} got both `config=` and the options {sorted(options)}. HINT: put every option in the "
            "config (`dataclasses.replace(config, ...)`), or pass keywords without `config=`."
        )
    if not isinstance(config, ScreeningConfig):
        raise ValueError(
            f"`config` must be a ScreeningConfig, got {type(config).__name__}. "
            "HINT: pass config=ScreeningConfig(...)."
        )
    return config


# --------------------------------------------------------------------------- the data
def check_inputs(x: Any, who: str = "NTK screening") -> None:
    """Refuse what the prompts cannot take: ``x`` must be a float tensor of target images ``[N, C, H, W]``.

    Prompting (:class:`~lightning_reuse.nn.PaddingPrompt`, :class:`~lightning_reuse.nn.FullPrompt`) is
    defined for image inputs; token-sequence sources (integer token ids) are not supported.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
    """
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        what = (
            f"a {x.dtype} tensor of shape {list(x.shape)}"
            if isinstance(x, torch.Tensor)
            else type(x).__name__
        )
        raise TypeError(
            f"{who} supports image inputs only: `x` must be a float tensor of target images [N, C, H, W] for "
            f"the input transform (PaddingPrompt, FullPrompt), got {what}. Token-sequence sources (integer "
            "token ids) are not supported: prompting is defined for image inputs. HINT: pass float images "
            "(uint8 images: `x.float() / 255`); for a token-sequence model, leave NTK screening out."
        )


def check_labels(y: Tensor, num_classes: int, who: str = "NTK screening") -> None:
    """Refuse labels the screening (and the training after it) cannot use: ``y`` must be ``[n]`` ints in ``[0, C)``.

    Raises:
        ValueError: ``num_classes < 2`` (a one-class problem has nothing to classify), ``y`` is not a 1-D
            integer tensor, or a label lies outside ``[0, num_classes)``.

    >>> check_labels(torch.tensor([0, 2]), 2)
    Traceback (most recent call last):
    ...
    ValueError: NTK screening: labels must lie in [0, 2) (the target classes of the label mapping), got range [0, 2]. HINT: relabel the targets to 0..C-1, or build the label mapping with num_target=3.
    """
    if num_classes < 2:
        raise ValueError(
            f"{who}: the label mapping has {num_classes} target class, expected at least 2: a one-class "
            "problem has nothing to classify and nothing to screen. HINT: build the label mapping with the "
            "number of target classes, e.g. FrequencyLabelMapping(num_source, num_target=C) with C >= 2."
        )
    if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise ValueError(
            f"{who}: labels must be a 1-D integer tensor [n], got dtype {y.dtype} and shape {list(y.shape)}. "
            "HINT: pass class indices, e.g. `y.long()`."
        )
    lo, hi = (int(y.min()), int(y.max())) if y.numel() else (0, 0)
    if lo < 0 or hi >= num_classes:
        fix = f", or build the label mapping with num_target={hi + 1}" if lo >= 0 else ""
        raise ValueError(
            f"{who}: labels must lie in [0, {num_classes}) (the target classes of the label mapping), got "
            f"range [{lo}, {hi}]. HINT: relabel the targets to 0..C-1{fix}."
        )


def degenerate_reasons(y: Tensor) -> list[str]:
    """Why labels ``y`` are too degenerate to screen: fewer than 2 samples, or one class present; else ``[]``.

    The scores compare the true labels with permuted ones and predict held-out samples: one sample or one
    class present leaves nothing to compare or predict (``rho`` is 1 by construction, the cross-fitted
    accuracy is trivially perfect), so such data gets FAIL with this reason, never PASS.

    >>> degenerate_reasons(torch.tensor([1, 1, 1]))[0].split(":")[0]
    'only one class present among the 3 screened samples (label 1)'
    >>> degenerate_reasons(torch.tensor([0, 1]))
    []
    """
    n, present = int(y.numel()), int(torch.unique(y).numel())
    if n < 2:
        return [
            f"only {n} target sample screened: the NTK scores need at least 2 samples of 2 classes (nothing "
            "can be compared or predicted)"
        ]
    if present < 2:
        return [
            f"only one class present among the {n} screened samples (label {int(y[0])}): the scores need at "
            "least 2 classes (true and permuted labels coincide)"
        ]
    return []
