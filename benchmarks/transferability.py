"""A leave-one-out zoo benchmark for the pre-checks: does a score rank retraining cost before any is spent?

Protocol (issue 15, items 3-4 at CPU scale; see ``docs/transferability.md``, section Evidence):

- Sources: SmallCNNs of several widths and depths pre-trained here on all ten digits, on class subsets and
  on relabelings (families ``digits10``, ``subset``, ``relabel``; cached like ``samples.zoo``), random-weight
  controls (family ``random``) and, in the CPU configuration, the ImageNet-pretrained EfficientNet-Lite0, -Lite1
  and -Lite2 (family ``imagenet``; digits upsampled to 32 px, 224 px in the GPU configuration ``gpu224``, three
  channels; each from its weights package,
  extra ``zoo``: a source whose package is missing is skipped, and the JSON and markdown say which and why;
  ``LEFT_OUT`` lists sources a configuration leaves out on purpose, none now). Sources only ever saw the first
  60% of the digits (split seed 0).
- Targets, on the other 40% (halved into a training and a test part): eight or more input shifts written
  here (noise, rotation at a random angle per image, elastic, contrast, pixelation, quantisation, occlusion,
  inversion), task shifts (relabelings, a class subset) and one unpaired shift, whose RESQUE_dist compares
  with clean samples of the source's own split instead of a clean twin of the same samples.
- Ground truth per (source, target), four strategies, each Adam with the same epochs, batch size and seeding:
  full fine-tuning and a linear probe on frozen features (new head), input reprogramming, and additive
  fine-tuning (the library's ``AdditiveModel``: the frozen source ``f`` in eval mode plus a zero-initialised
  ``SideConv`` ``g`` of width 8 reading the input, ``F(x) = f(x) + g(x)``, as the demo builds it; see
  :func:`additive_model` for a target whose class count differs from the source's outputs). Truths: test
  accuracy at the budget (``_acc``), epochs until the test accuracy reaches 90% of the best source's final
  accuracy on that target (``_epochs``), the energy of the whole budget (``_wh``) and the energy spent up to the
  epoch that reaches the target (``_wh_to``); a miss is censored in both (ranked below every hit, misses tied).
- Energy (``_wh``, ``_wh_to``): what codecarbon's ``OfflineEmissionsTracker(tracking_mode="process")`` estimates
  on a CPU without RAPL, applied to exact per-window CPU times: ``Wh = process CPU seconds x TDP / CPUs / 3600``
  (codecarbon 3.x's process mode: ``power = TDP x (CPU seconds / wall seconds) / CPUs``, times the wall seconds;
  TDP and CPU count read from codecarbon's own hardware detection when the run starts; on the 2-core reference
  machine 8 W / 2 = 4 W per busy core). Windows: a strategy's setup (model copy, the probe's training features,
  the additive base's outputs on the training part) and each epoch's training loop, timed with
  ``time.process_time`` (this process only: two ``--jobs`` workers never count each other); the per-epoch test
  evaluation is instrumentation and not counted. CPU only: RAM is a constant-power heuristic in codecarbon
  (power x wall time, not work), GPU none. The same codecarbon tracker measures the whole run (this process and
  its worker processes) as a cross-check, stored under ``energy``. Why not a codecarbon window per epoch: one
  ``flush`` reads power sampled every ``measure_power_secs``, so windows of tens of milliseconds (a SmallCNN
  epoch) come out as the last sample's power times the window, not the window's own work.
- Scores (higher = predicted cheaper / better): -RESQUE_dist (input shifts), -RESQUE_task, ``resque`` (dist
  on input shifts, task on task shifts: the mode a user would pick), LogME, LEEP, NCE, H-score, k-NN
  accuracy, the cross-fitted linear probe, the source's own accuracy on the new test data (label mapping
  fitted on the target's training part), and the data-free ranking by parameter count. ``fitted_*``: a ridge
  fit of the fine-tuning epochs from [-resque, source accuracy, log size], fitted leaving one shift type out
  (``loso``) and, separately, one source family out (``lofo``).
- NTK screening (question b: does it rank reprogramming's gain over the linear probe?): the library's
  ``screen_reprogramming`` of the ground truth's own reprogramming (``x + delta`` as a ``FullPrompt`` with the
  identity activation, the same seeded linear map of the source logits; and the library's default FLM mapping
  where the target has at most as many classes as the source has outputs) on ``ntk_samples`` stratified samples
  of the target's training part. Truth: ``reprogram_acc > probe_acc`` at the budget, and the gain. AUROC and
  Spearman against the screening's own baselines (zero-step, probe and LogME on the source logits) and the zoo's;
  fitted rules (logistic fits, thresholds) with one source family left out; bootstrap over sources.
- Evaluation: weighted Kendall tau (``scipy.stats.weightedtau``) and Spearman, ``across_models`` (per target
  over sources, then averaged: the field's protocol) and ``across_shifts`` (per source over targets, then
  averaged); 95% percentile bootstrap intervals resample the configurations averaged over (targets,
  respectively sources), never single runs; gaps between two scores use the same resamples.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/transferability.py --jobs 2   # CPU configuration (1414 s on 2 cores)
    OMP_NUM_THREADS=1 python benchmarks/transferability.py            # the same in one process (not timed)
    OMP_NUM_THREADS=1 python benchmarks/transferability.py --reuse    # only the pairs the stored JSON lacks
    OMP_NUM_THREADS=1 python benchmarks/transferability.py --quick    # seconds, for the test
    python benchmarks/transferability.py --config gpu224 --reuse      # 224 px on one CUDA GPU (energy: NVML)
    python benchmarks/transferability.py --config gpu224 --rescore --drop-incomplete   # analyse what ran
    python benchmarks/transferability.py --rescore --from benchmarks/results/transferability.json \
        --sources efficientnet_lite0 digits10_all_w8d2 --out /tmp/two_sources       # a subset's analysis

Every finished pair is appended to ``<stem>.runs.jsonl``: a stopped run loses at most the pair in progress, and
``--reuse`` computes only the pairs missing there (``--runs-only`` computes and does not analyse).

On a 2-core CPU, 1 thread, one pair (the noise target) took 2-4 s with a SmallCNN source, 76 s with
EfficientNet-Lite0, 100 s with -Lite1 and 119 s with -Lite2; the 11 sources without Lite1 took 964 s, Lite1's 12
pairs 1372 s (before the additive strategy was added).

On one H100 (one process), one EfficientNet pair at 224 px took 11 s (Lite0) and 13 s (Lite1), a SmallCNN pair
about 2 s.

Writes ``benchmarks/results/transferability{,_quick,_gpu224}.json`` and ``.md`` (``--out`` to change the stem).
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import itertools
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn

from lightning_reuse.functional import (
    ScreeningConfig,
    h_score,
    knn_accuracy,
    leep,
    linear_probe_accuracy,
    logme,
    nce,
    resque_dist,
    resque_task,
    screen_reprogramming,
    stratified_subset,
)
from lightning_reuse.nn import AdditiveModel, FullPrompt, LinearLabelMapping, ReprogrammedModel, SideConv
from lightning_reuse.samples import SmallCNN, load_digits_tensors, pretrained_small_cnn, split_indices
from lightning_reuse.samples.models import train_classifier
from lightning_reuse.samples.zoo import default_cache_dir

MACHINE = "2-core CPU, 1 thread"
RESULTS = Path(__file__).parent / "results"
SCORES = (
    "resque", "resque_dist", "resque_task", "logme", "leep", "nce", "h_score", "knn_accuracy",
    "linear_probe", "source_accuracy", "size",
)  # fmt: skip
STRATEGIES = ("finetune", "probe", "reprogram", "additive")
TRUTH_KINDS = ("acc", "epochs", "wh", "wh_to")
TRUTHS = tuple(f"{s}_{m}" for s in STRATEGIES for m in TRUTH_KINDS)


@dataclass
class Config:
    """One benchmark configuration (``quick`` for the test, ``cpu`` for the committed run)."""

    name: str
    sources: list[dict[str, Any]]
    targets: list[dict[str, Any]]
    epochs: int = 15
    source_epochs: int = 30
    lr_finetune: float = 3e-3
    lr_probe: float = 1e-2
    lr_additive: float = 3e-3  # the demo's additive side network (lightning_reuse.demo.strategies)
    side_width: int = 8  # the demo's SideConv width
    batch_size: int = 32
    boot: int = 2000
    seed: int = 0
    cache: bool = True
    ntk_samples: int = 200
    device: str = "cpu"  # where the pairs run; "cuda": the GPU configuration (energy from NVML, one process)
    extra: dict[str, Any] = field(default_factory=dict)


def _cnn(family: str, width: int, depth: int, **kw: Any) -> dict[str, Any]:
    task = kw.get("classes") or kw.get("relabel") or "all"
    return {
        "name": f"{family}_{task}_w{width}d{depth}",
        "family": family,
        "width": width,
        "depth": depth,
        **kw,
    }


#: Sources the CPU configuration leaves out, and why (recorded with the skipped sources); none now.
LEFT_OUT: list[dict[str, str]] = []


def cpu_config() -> Config:
    """>= 8 sources (13) in 5 families, 12 targets (8 input shifts, 3 task shifts, 1 unpaired shift)."""
    sources = [
        _cnn("digits10", 8, 2), _cnn("digits10", 16, 2), _cnn("digits10", 32, 2), _cnn("digits10", 32, 3),
        _cnn("subset", 16, 2, classes=[0, 1, 2, 3, 4]), _cnn("subset", 32, 2, classes=[5, 6, 7, 8, 9]),
        _cnn("relabel", 16, 2, relabel="parity"), _cnn("relabel", 32, 2, relabel="mod3"),
        _cnn("random", 16, 2), _cnn("random", 32, 3),
        {"name": "efficientnet_lite0", "family": "imagenet"}, {"name": "efficientnet_lite1", "family": "imagenet"},
        {"name": "efficientnet_lite2", "family": "imagenet"},
    ]  # fmt: skip
    kinds = (
        "noise",
        "rotation",
        "elastic",
        "contrast",
        "pixelation",
        "quantisation",
        "occlusion",
        "inversion",
    )
    targets = [{"name": k, "type": k, "shift": k} for k in kinds]
    targets += [
        {"name": "relabel_parity", "type": "relabel", "task": "parity"},
        {"name": "relabel_mod3", "type": "relabel", "task": "mod3"},
        {"name": "subset_5to9", "type": "subset", "task": "subset"},
        {"name": "unpaired_rotation_noise", "type": "unpaired", "shift": "rotation_noise", "unpaired": True},
    ]
    return Config("cpu", sources, targets, extra={"left_out": LEFT_OUT})


def gpu_config() -> Config:
    """The CPU configuration at 224 px on a GPU: the ImageNet sources see the digits at their training resolution.

    The same 13 sources, 12 targets, budget, learning rates and seeds as :func:`cpu_config`; only the
    EfficientNets' input resolution (224 px instead of 32, upsampled from 8x8 inside the source, so every
    shift, prompt and side network stays on the 8x8 digits) and the device differ. Energy: the GPU's NVML
    counter (see :class:`GPUWindows`).
    """
    cpu = cpu_config()
    sources = [{**s, "image_size": 224} if s["family"] == "imagenet" else s for s in cpu.sources]
    return replace(cpu, name="gpu224", sources=sources, device="cuda")


CONFIGS: dict[str, Callable[[], Config]] = {"cpu": cpu_config, "gpu224": gpu_config}


def quick_config() -> Config:
    """3 sources, 4 targets, 3 epochs: the end-to-end test (seconds)."""
    sources = [_cnn("digits10", 8, 2), _cnn("subset", 8, 2, classes=[0, 1, 2, 3, 4]), _cnn("random", 8, 2)]
    targets = [
        {"name": "noise", "type": "noise", "shift": "noise"},
        {"name": "occlusion", "type": "occlusion", "shift": "occlusion"},
        {"name": "relabel_parity", "type": "relabel", "task": "parity"},
        {"name": "unpaired_rotation_noise", "type": "unpaired", "shift": "rotation_noise", "unpaired": True},
    ]
    return Config("quick", sources, targets, epochs=3, source_epochs=3, boot=200, cache=False)


# ----------------------------------------------------------------------------------------------------- shifts
def _warp(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def _rotate(x: Tensor, g: torch.Generator, max_deg: float = 45.0) -> Tensor:
    a = (torch.rand(len(x), generator=g) * 2 - 1) * max_deg * math.pi / 180
    c, s, z = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    return _warp(x, torch.stack([torch.stack([c, -s, z], 1), torch.stack([s, c, z], 1)], 1))


def _elastic(x: Tensor, g: torch.Generator, alpha: float = 0.35) -> Tensor:
    n, _, h, w = x.shape
    disp = F.avg_pool2d(torch.randn(n, 2, h, w, generator=g), 3, stride=1, padding=1) * alpha * 3
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = torch.stack([xs, ys], -1).expand(n, h, w, 2) + disp.permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, align_corners=True, padding_mode="zeros")


def _occlude(x: Tensor, g: torch.Generator, size: int = 4) -> Tensor:
    out = x.clone()
    rows = torch.randint(0, x.shape[-2] - size + 1, (len(x),), generator=g)
    cols = torch.randint(0, x.shape[-1] - size + 1, (len(x),), generator=g)
    for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
        out[i, :, r : r + size, c : c + size] = 0.0
    return out


def shift_images(x: Tensor, kind: str, seed: int) -> Tensor:
    """The benchmark's input shifts of ``x: [N, 1, 8, 8]`` in [0, 1] (several not driven by one scalar)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "noise":
        out = x + 0.3 * torch.randn(x.shape, generator=g)
    elif kind == "rotation":
        out = _rotate(x, g)
    elif kind == "elastic":
        out = _elastic(x, g)
    elif kind == "contrast":  # a random contrast factor per image, around the image mean
        m, c = x.mean((1, 2, 3), keepdim=True), 0.15 + 0.25 * torch.rand(len(x), 1, 1, 1, generator=g)
        out = m + c * (x - m)
    elif kind == "pixelation":
        out = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    elif kind == "quantisation":
        out = (x > 0.5).to(x.dtype)
    elif kind == "occlusion":
        out = _occlude(x, g)
    elif kind == "inversion":
        out = 1.0 - x
    elif kind == "rotation_noise":
        out = _rotate(x, g, 30.0) + 0.15 * torch.randn(x.shape, generator=g)
    else:
        raise ValueError(
            f"`kind` must be one of the benchmark's shifts, got {kind!r}. HINT: see shift_images."
        )
    return out.clamp(0.0, 1.0)


def relabel(y: Tensor, task: str) -> Tensor:
    """Task shifts: ``parity`` (2 classes), ``mod3`` (3 classes)."""
    return y % 2 if task == "parity" else y % 3


# ---------------------------------------------------------------------------------------------------- sources
class EfficientNetSource(nn.Module):
    """An EfficientNet-Lite on digits: upsample to ``image_size`` px (32 in the CPU configuration, 224 in the GPU
    one), grey to RGB, its normalisation; ``embed`` + ``head``."""

    def __init__(self, name: str = "efficientnet-lite0", image_size: int = 32) -> None:
        super().__init__()
        from lightning_reuse.samples.efficientnet import load_efficientnet_lite

        self.image_size = image_size
        self.net, norm = load_efficientnet_lite(name, pretrained=True, image_size=image_size)  # type: ignore[arg-type]
        self.register_buffer("mean", torch.tensor(norm.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(norm.std).view(1, 3, 1, 1))
        self.head = self.net._fc

    def embed(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
        return self.net._avg_pooling(self.net.extract_features((x - self.mean) / self.std)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


def _cached_relabel_cnn(spec: dict[str, Any], cfg: Config) -> SmallCNN:
    key = hashlib.sha1(json.dumps({**spec, "epochs": cfg.source_epochs, "v": 1}, sort_keys=True).encode())
    file = default_cache_dir() / "transferability" / f"cnn_{key.hexdigest()[:12]}.pt"
    k = 2 if spec["relabel"] == "parity" else 3
    net = SmallCNN(num_classes=k, width=spec["width"], depth=spec["depth"])
    if cfg.cache and file.exists():
        net.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        return net.eval()
    x, y = load_digits_tensors()
    tr = split_indices(len(x), (0.6, 0.4), seed=0)[0]
    torch.manual_seed(cfg.seed)
    net = SmallCNN(num_classes=k, width=spec["width"], depth=spec["depth"])
    train_classifier(net, x[tr], relabel(y[tr], spec["relabel"]), epochs=cfg.source_epochs, seed=cfg.seed)
    if cfg.cache:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), file.with_suffix(".tmp"))
        file.with_suffix(".tmp").replace(file)
    return net.eval()


def efficientnet_name(spec: dict[str, Any]) -> str:
    """The loader's name of an ``imagenet`` source (``efficientnet_lite1`` -> ``efficientnet-lite1``)."""
    return spec["name"].replace("_", "-")


def build_source(spec: dict[str, Any], cfg: Config) -> nn.Module:
    """Pre-train (or load from the cache) one source, on ``cfg.device``; random controls: fresh SmallCNNs."""
    return _build_source(spec, cfg).to(cfg.device)


def _build_source(spec: dict[str, Any], cfg: Config) -> nn.Module:
    fam = spec["family"]
    if fam == "imagenet":
        return EfficientNetSource(efficientnet_name(spec), spec.get("image_size", 32)).eval()
    if fam == "random":
        torch.manual_seed(cfg.seed + 17)
        return SmallCNN(num_classes=10, width=spec["width"], depth=spec["depth"]).eval()
    if fam == "relabel":
        return _cached_relabel_cnn(spec, cfg)
    cache = "default" if cfg.cache else None
    kw = {"classes": spec.get("classes"), "width": spec["width"], "depth": spec["depth"]}
    return pretrained_small_cnn(**kw, epochs=cfg.source_epochs, seed=cfg.seed, cache_dir=cache)


def missing_packages(spec: dict[str, Any]) -> str | None:
    """Why a source cannot be built here (its packages are not installed), or ``None`` if it can."""
    if spec["family"] != "imagenet":
        return None
    from lightning_reuse.samples.efficientnet import load_efficientnet_lite

    try:
        load_efficientnet_lite(efficientnet_name(spec), pretrained=False, image_size=32)  # type: ignore[arg-type]
    except ImportError as err:
        return str(err)
    return None


def available_sources(cfg: Config) -> tuple[Config, list[dict[str, str]]]:
    """The configuration without the sources whose packages are missing, and those skipped (name, reason).

    The skipped sources: the configuration's ``extra["left_out"]``, then those whose packages are missing.
    """
    reasons = {spec["name"]: missing_packages(spec) for spec in cfg.sources}
    skipped = [{"name": s["name"], "reason": s["reason"]} for s in cfg.extra.get("left_out", [])]
    skipped += [{"name": name, "reason": why} for name, why in reasons.items() if why is not None]
    return replace(cfg, sources=[s for s in cfg.sources if reasons[s["name"]] is None]), skipped


def count_parameters(net: nn.Module) -> int:
    """The data-free size score: trainable parameters of the whole source (head included)."""
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------------------------------- targets
def make_target(spec: dict[str, Any], seed: int) -> dict[str, Tensor]:
    """A target's shifted training and test parts and its clean reference for RESQUE_dist (if an input shift)."""
    x, y = load_digits_tensors()
    src, pool = split_indices(len(x), (0.6, 0.4), seed=0)
    tr, te = (pool[p] for p in split_indices(len(pool), (0.5, 0.5), seed=1))
    out = {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}
    if "task" in spec:
        if spec["task"] == "subset":
            keep_tr, keep_te = y[tr] >= 5, y[te] >= 5
            out = {"x_train": x[tr][keep_tr], "y_train": y[tr][keep_tr] - 5}
            out |= {"x_test": x[te][keep_te], "y_test": y[te][keep_te] - 5}
        else:
            out["y_train"], out["y_test"] = relabel(y[tr], spec["task"]), relabel(y[te], spec["task"])
        return out
    if spec.get("unpaired"):  # the clean reference: other samples, from the source's own split
        out["x_ref"], out["y_ref"] = x[src[: len(tr)]], y[src[: len(tr)]]
    else:  # paired: the clean twins of the shifted training samples
        out["x_ref"], out["y_ref"] = x[tr], y[tr]
    out["x_train"] = shift_images(x[tr], spec["shift"], seed)
    out["x_test"] = shift_images(x[te], spec["shift"], seed + 1)
    return out


def make_targets(cfg: Config, which: list[int] | None = None) -> list[dict[str, Tensor]]:
    """The configuration's targets (all, or those at ``which``), seeded per target, on ``cfg.device``."""
    which = list(range(len(cfg.targets))) if which is None else which
    made = [make_target(cfg.targets[t], cfg.seed + 100 * t) for t in which]
    return [{k: v.to(cfg.device) for k, v in tgt.items()} for tgt in made]


# ----------------------------------------------------------------------------------------------------- scores
@torch.no_grad()
def embed_logits(net: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Penultimate features and logits of ``net`` (eval mode) on ``x``, in chunks."""
    net.eval()
    feats = torch.cat([net.embed(x[i : i + 256]) for i in range(0, len(x), 256)])
    return feats, net.head(feats)


def frequency_mapping(z_train: Tensor, y_train: Tensor, k: int) -> Tensor:
    """Source class -> its most frequent target label on the training part (unseen: the most frequent label)."""
    counts = torch.zeros(k, int(y_train.max()) + 1, device=z_train.device).index_put_(
        (z_train, y_train), torch.ones(len(z_train), device=z_train.device), True
    )
    fallback = torch.bincount(y_train).argmax()
    return torch.where(counts.sum(1) > 0, counts.argmax(1), fallback)


def mapped_accuracy(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor, k: int) -> float:
    """Zero-step accuracy: each source class maps to its most frequent target label on the training part."""
    mapping = frequency_mapping(z_train, y_train, k)
    return float((mapping[z_test] == y_test).double().mean())


def score_pair(net: nn.Module, tgt: dict[str, Tensor]) -> dict[str, float]:
    """Every score of one (source, target) pair, oriented so that higher predicts cheaper / better transfer."""
    f, logits = (v.cpu() for v in embed_logits(net, tgt["x_train"]))
    y = tgt["y_train"].cpu()
    logits_te, y_te = embed_logits(net, tgt["x_test"])[1].cpu(), tgt["y_test"].cpu()
    k = logits.shape[1]
    out = {
        "logme": float(logme(f, y)),
        "leep": float(leep(logits.double().softmax(-1), y)),
        "nce": float(nce(logits.argmax(-1), y, num_source=k)),
        "h_score": float(h_score(f, y)),
        "knn_accuracy": float(knn_accuracy(f, y)),
        "linear_probe": float(linear_probe_accuracy(f, y)),
        "source_accuracy": mapped_accuracy(logits.argmax(-1), y, logits_te.argmax(-1), y_te, k),
        "size": math.log(count_parameters(net)),
        "resque_task": -float(resque_task(f, y)),
        "resque_dist": float("nan"),
    }
    if "x_ref" in tgt:
        f_ref, y_ref = embed_logits(net, tgt["x_ref"])[0].cpu(), tgt["y_ref"].cpu()
        paired = tgt["x_ref"].shape == tgt["x_train"].shape and torch.equal(y_ref, y)
        shifted_labels = None if paired else y
        with (
            warnings.catch_warnings()
        ):  # a class seen on one side only is left out of the mean, as documented
            warnings.simplefilter("ignore")
            out["resque_dist"] = -float(resque_dist(f_ref, y_ref, f, shifted_labels, num_classes=10))
    out["resque"] = out["resque_dist"] if "x_ref" in tgt else out["resque_task"]
    return out


# ----------------------------------------------------------------------------------------------- ground truth
class CPUWindows:
    """A window's cost in process CPU seconds (``time.process_time``: this process only)."""

    key = "cpu_seconds"

    def read(self) -> float:
        return time.process_time()


class GPUWindows:
    """A window's cost in GPU joules: NVML's total-energy counter of the whole GPU, read after synchronising.

    ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the driver loaded; what codecarbon reads for an
    NVIDIA GPU; Volta or newer). The counter is the whole GPU's, so the pairs run in one process (``--jobs 1``);
    what the GPU draws while the host prepares the next launch is counted, as a user's bill would count it. It
    moves in steps (about 12 J on an H100 under the zoo's load), so a window shorter than a step may read 0 J.
    """

    key = "gpu_joules"
    method = "nvmlDeviceGetTotalEnergyConsumption"

    def __init__(self, device: str) -> None:
        import pynvml

        pynvml.nvmlInit()
        index = torch.device(device).index
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(
            torch.cuda.current_device() if index is None else index
        )
        try:
            self.read()
        except pynvml.NVMLError as err:
            raise RuntimeError(
                f"The GPU configuration measures energy with NVML's total-energy counter, and this GPU has none "
                f"({err}). HINT: run it on an NVIDIA GPU of the Volta generation or newer."
            ) from err

    def read(self) -> float:
        torch.cuda.synchronize()
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0

    def update_interval(self, seconds: float = 1.0) -> dict[str, Any]:
        """How often the counter moves: polled for ``seconds`` while the GPU multiplies matrices."""
        a = torch.randn(2048, 2048, device="cuda")
        stamps, last, end = [], self.read(), time.perf_counter() + seconds
        while time.perf_counter() < end:
            a = (a @ a).clamp_(-1, 1)
            now = self.read()
            if now != last:
                stamps.append(time.perf_counter())
                last = now
        gaps = np.diff(stamps)
        return {
            "changes": len(stamps),
            "median_s": float(np.median(gaps)) if len(gaps) else None,
            "max_s": float(gaps.max()) if len(gaps) else None,
        }


@functools.cache
def windows_meter(device: str) -> CPUWindows | GPUWindows:
    """What the strategies' windows are measured in, per device (one per process)."""
    return CPUWindows() if torch.device(device).type == "cpu" else GPUWindows(device)


def _fit(
    model: nn.Module, params: list[Tensor], data: tuple[Tensor, ...], lr: float, cfg: Config
) -> tuple[list[float], list[float]]:
    """Adam on cross-entropy for ``cfg.epochs``; test accuracy (eval mode) after every epoch.

    Returns the accuracies and what each epoch's training loop cost (:func:`windows_meter`: process CPU seconds,
    or GPU joules; the test evaluation, instrumentation, is not counted).
    """
    x, y, x_te, y_te = data
    read = windows_meter(cfg.device).read
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(cfg.seed)
    accs, cpu = [], []
    for _ in range(cfg.epochs):
        start = read()
        model.train()
        perm = torch.randperm(len(x), generator=g).to(x.device)
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        cpu.append(read() - start)
        model.eval()
        with torch.no_grad():
            accs.append(float((model(x_te).argmax(-1) == y_te).double().mean()))
    return accs, cpu


def _new_head(width: int, num_classes: int, seed: int, device: str | torch.device = "cpu") -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(width, num_classes).to(device)


def ground_truth(
    net: nn.Module, tgt: dict[str, Tensor], cfg: Config
) -> tuple[dict[str, list[float]], dict[str, dict[str, Any]], float]:
    """Per-epoch test accuracies of full fine-tuning (new head), a linear probe on frozen features,
    reprogramming and additive fine-tuning; their CPU seconds; the additive model's accuracy before training.

    Cost per strategy (:func:`windows_meter`: CPU seconds, or GPU joules): ``setup`` (what training needs once:
    the model copy, the probe's training features, the additive base's outputs on the training part) and
    ``epochs`` (each epoch's training loop).
    """
    c = int(tgt["y_train"].max()) + 1
    y, y_te = tgt["y_train"], tgt["y_test"]
    data = (tgt["x_train"], y, tgt["x_test"], y_te)
    curves, cpu = {}, {}
    read, dev = windows_meter(cfg.device).read, cfg.device

    start = read()
    tuned = copy.deepcopy(net)
    tuned.head = _new_head(tuned.head.in_features, c, cfg.seed, dev)
    setup = read() - start
    curves["finetune"], epochs = _fit(tuned, list(tuned.parameters()), data, cfg.lr_finetune, cfg)
    cpu["finetune"] = {"setup": setup, "epochs": epochs}

    start = read()
    f_tr, _ = embed_logits(net, tgt["x_train"])
    head = _new_head(f_tr.shape[1], c, cfg.seed, dev)
    setup = read() - start
    f_te, _ = embed_logits(net, tgt["x_test"])
    curves["probe"], epochs = _fit(head, list(head.parameters()), (f_tr, y, f_te, y_te), cfg.lr_probe, cfg)
    cpu["probe"] = {"setup": setup, "epochs": epochs}

    start = read()
    program = Reprogrammed(net, c, cfg.seed).to(dev)
    setup = read() - start
    curves["reprogram"], epochs = _fit(
        program, [program.delta, *program.mapping.parameters()], data, cfg.lr_probe, cfg
    )
    cpu["reprogram"] = {"setup": setup, "epochs": epochs}

    start = read()
    additive = additive_model(net, tgt["x_train"], y, cfg).to(dev)
    cached = CachedAdditive(additive)
    packed_tr = cached.pack(tgt["x_train"])
    setup = read() - start
    packed_te = cached.pack(tgt["x_test"])
    start_acc = float((packed_te[:, cached.pixels :].argmax(-1) == y_te).double().mean())
    curves["additive"], epochs = _fit(
        cached, list(additive.side.parameters()), (packed_tr, y, packed_te, y_te), cfg.lr_additive, cfg
    )
    cpu["additive"] = {"setup": setup, "epochs": epochs}
    return curves, cpu, start_acc


class MappedSource(nn.Module):
    """The frozen source's logits carried to the target's classes by a fixed many-to-one label mapping.

    Target class ``y`` gets the largest logit among the source classes mapped to it; a class no source class
    maps to gets the sample's smallest logit. So ``argmax`` of the output is ``mapping[argmax source logits]``:
    the source's zero-step prediction through the mapping (the ``source_accuracy`` score's).
    """

    def __init__(self, net: nn.Module, mapping: Tensor, num_classes: int) -> None:
        super().__init__()
        self.net, self.num_classes = net, num_classes
        self.register_buffer("mapping", mapping.long().clone())

    def forward(self, x: Tensor) -> Tensor:
        z = self.net(x)
        out = z.min(1, keepdim=True).values.expand(len(z), self.num_classes).clone()
        return out.scatter_reduce(1, self.mapping.expand(len(z), -1), z, "amax", include_self=True)


def additive_model(net: nn.Module, x_train: Tensor, y_train: Tensor, cfg: Config) -> AdditiveModel:
    """Additive fine-tuning of one pair at step 0: the library's ``AdditiveModel`` (frozen base in eval mode).

    The side network is the demo's (``lightning_reuse.demo.strategies``): ``SideConv(1, num_classes, width=8)``
    reading the 8x8 input, last layer zero-initialised, so ``F == f`` before the first step; seeded with
    ``cfg.seed``. ``AdditiveModel`` adds ``g``'s output to the base's, so their shapes must agree: where the
    target has as many classes as the source has outputs, the base is the source itself (the library's
    ``F(x) = f(x) + g(x)``, what the demo does: its targets always have the source's ten classes). Where the
    counts differ (task shifts, subset and relabel sources, the 1000 ImageNet classes), the library and the
    demo have no rule; here the base is the frozen source followed by a fixed label mapping,
    :class:`MappedSource`, the frequency mapping the ``source_accuracy`` score uses, fitted on the target's
    training part only. The base then still predicts exactly what the source predicts through that mapping.
    """
    c, k = int(y_train.max()) + 1, net.head.out_features
    base: nn.Module = copy.deepcopy(net).eval().requires_grad_(False)
    if c != k:
        _, logits = embed_logits(net, x_train)
        base = MappedSource(base, frequency_mapping(logits.argmax(-1), y_train, k), c)
    torch.manual_seed(cfg.seed)
    side = SideConv(x_train.shape[1], c, width=cfg.side_width)
    return AdditiveModel(base.requires_grad_(False), side)


class CachedAdditive(nn.Module):
    """``AdditiveModel``'s forward with the frozen base's outputs computed once (exact: the base is in eval mode).

    Inputs are packed rows ``[x.flatten(1), base(x)]`` (:meth:`pack`); ``forward`` returns
    ``base(x) + side(x)``, the sum ``AdditiveModel`` computes, with the base's part read from the row. Only the
    side network trains, so the base's outputs never change; the EfficientNet pairs stay cheap.
    """

    def __init__(self, model: AdditiveModel, shape: tuple[int, ...] = (1, 8, 8)) -> None:
        super().__init__()
        if model.layer is not None:
            raise ValueError("CachedAdditive needs a side network that reads the input (layer=None).")
        self.model, self.shape, self.pixels = model, shape, math.prod(shape)

    @torch.no_grad()
    def pack(self, x: Tensor) -> Tensor:
        """Rows ``[x.flatten(1), base(x)]`` (the base in eval mode, in chunks of 256)."""
        self.model.base.eval()
        out = torch.cat([self.model.base(x[i : i + 256]) for i in range(0, len(x), 256)])
        return torch.cat([x.flatten(1), out], 1)

    def forward(self, packed: Tensor) -> Tensor:
        x = packed[:, : self.pixels].view(-1, *self.shape)
        return packed[:, self.pixels :] + self.model.side(x)


class Reprogrammed(nn.Module):
    """Input reprogramming: a learned additive input pattern, the frozen source, a learned map of its logits."""

    def __init__(self, net: nn.Module, num_classes: int, seed: int) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.delta = nn.Parameter(torch.zeros(1, 1, 8, 8))
        self.mapping = _new_head(net.head.out_features, num_classes, seed)

    def train(self, mode: bool = True) -> Reprogrammed:
        """Train the pattern and the map; the source stays in eval mode (frozen statistics)."""
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.mapping(self.net(x + self.delta))


def epochs_to(accs: list[float], target: float) -> int | None:
    """First epoch (1-based) whose test accuracy reaches ``target``; ``None`` = censored (a miss)."""
    return next((i + 1 for i, a in enumerate(accs) if a >= target - 1e-12), None)


# -------------------------------------------------------------------------------- NTK screening (question b)
def reprogram_model(net: nn.Module, num_classes: int, cfg: Config) -> ReprogrammedModel:
    """The ground truth's reprogramming at its start, as the library's module.

    ``x + delta`` with ``delta = 0`` is :class:`~lightning_reuse.nn.FullPrompt` with the identity activation on
    the 8x8 input; the frozen source (a copy); the same seeded linear map of its logits as ``Reprogrammed``.
    """
    k = net.head.out_features
    mapping = LinearLabelMapping(k, num_classes)
    mapping.linear.load_state_dict(_new_head(k, num_classes, cfg.seed).state_dict())
    prompt = FullPrompt((1, 8, 8), (1, 8, 8), activation="identity")
    dev = cfg.device
    return ReprogrammedModel(copy.deepcopy(net), prompt.to(dev), mapping.to(dev))


def _screen_fields(scores: Any, suffix: str) -> dict[str, float]:
    decision = ("FAIL", "WARN", "PASS").index(scores.decision)  # higher = predicts success
    keys = (
        "ntk_score", "ntk_accuracy", "rho", "rho_labels", "e_tau", "r_eff", "predicted_residual", "source_gate",
        "guard_confidence", "guard_nmi",
    )  # fmt: skip
    out = {f"{k}{suffix}": float(getattr(scores, k)) for k in keys}
    return out | {f"decision{suffix}": float(decision)}


def screen_pair(net: nn.Module, tgt: dict[str, Tensor], cfg: Config) -> dict[str, Any]:
    """The library's NTK screening of one pair on a stratified subset of the target's TRAINING part.

    Two label mappings: ``model`` (the ground truth's own seeded linear map, as it starts; the kernel is the
    prompt's, the map's own parameters are not in it) and ``flm`` (the library's default: the one-to-one
    frequency mapping fitted on the screened samples; where the target has more classes than the source
    has outputs it cannot be built, and the ``_flm`` fields repeat the ``model`` screening,
    ``flm_feasible = False``). The callback's baselines come from the same pass: the zero-step accuracy
    (through the FLM; where infeasible, the many-to-one frequency mapping on the same samples, both in-sample),
    the cross-fitted linear probe and LogME on the source logits.
    """
    x, y = tgt["x_train"], tgt["y_train"]
    c, k = int(y.max()) + 1, net.head.out_features
    model = reprogram_model(net, c, cfg)
    config = ScreeningConfig(num_samples=cfg.ntk_samples, seed=cfg.seed)
    start = time.perf_counter()
    own = screen_reprogramming(model, x, y, config=replace(config, label_mapping="model"))
    out: dict[str, Any] = {"flm_feasible": c <= k, **_screen_fields(own, "")}
    out["seconds_model"] = time.perf_counter() - start
    out["linear_probe_logits"] = own.baselines["linear_probe"]
    out["logme_logits"] = own.baselines["logme"]
    if c <= k:
        start = time.perf_counter()
        flm = screen_reprogramming(model, x, y, config=replace(config, label_mapping="flm"))
        out |= _screen_fields(flm, "_flm") | {"seconds_flm": time.perf_counter() - start}
        out["zero_step_accuracy"] = flm.baselines["zero_step_accuracy"]
    else:
        out |= _screen_fields(own, "_flm") | {"seconds_flm": 0.0}
        idx = stratified_subset(y.cpu(), cfg.ntk_samples, cfg.seed).to(y.device)
        with torch.no_grad():
            z = net.eval()(x[idx]).argmax(-1)
        out["zero_step_accuracy"] = mapped_accuracy(z, y[idx], z, y[idx], k)
    out["n"] = int(own.n)
    return out


def add_screening(cfg: Config, runs: list[dict[str, Any]]) -> float:
    """Screen every run that has no ``ntk`` entry yet (``--rescore`` of runs made before the screening)."""
    todo = [r for r in runs if "ntk" not in r]
    if not todo:
        return 0.0
    start = time.perf_counter()
    targets = make_targets(cfg)
    for s in sorted({r["s"] for r in todo}):
        net = build_source(cfg.sources[s], cfg)
        for r in (r for r in todo if r["s"] == s):
            torch.manual_seed(cfg.seed)
            r["ntk"] = screen_pair(net, targets[r["t"]], cfg)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------- evaluation
def truth_matrices(runs: list[dict[str, Any]], ns: int, nt: int, cfg: Config) -> dict[str, np.ndarray]:
    """Oriented ground truth ``[source, target]`` (higher = better / cheaper).

    Accuracies; minus epochs to target (a miss = budget + 1); minus Wh of the budget; minus Wh to the target,
    a miss at :func:`censored_wh` (below every hit of every run, misses tied), as epochs are censored.
    """
    out = {t: np.full((ns, nt), np.nan) for t in TRUTHS}
    miss = censored_wh(runs)
    for r in runs:
        for strategy in STRATEGIES:
            out[f"{strategy}_acc"][r["s"], r["t"]] = r[f"{strategy}_acc"]
            epochs = r[f"{strategy}_epochs"]
            out[f"{strategy}_epochs"][r["s"], r["t"]] = -(cfg.epochs + 1 if epochs is None else epochs)
            wh, wh_to = r.get(f"{strategy}_wh"), r.get(f"{strategy}_wh_to")
            if wh is not None:  # runs stored before the energy was measured have none
                out[f"{strategy}_wh"][r["s"], r["t"]] = -wh
                out[f"{strategy}_wh_to"][r["s"], r["t"]] = -(miss if wh_to is None else wh_to)
    return out


def censored_wh(runs: list[dict[str, Any]]) -> float:
    """The Wh a miss is ranked at: twice the largest budget's Wh of any run and strategy (above every hit)."""
    whs = [r[f"{s}_wh"] for r in runs for s in STRATEGIES if r.get(f"{s}_wh") is not None]
    return 2.0 * max(whs) if whs else float("nan")


def _corr(x: np.ndarray, y: np.ndarray, how: str) -> float:
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    fn: Callable[..., Any] = stats.weightedtau if how == "weightedtau" else stats.spearmanr
    return float(fn(x, y)[0])


def unit_correlations(score: np.ndarray, truth: np.ndarray, protocol: str, how: str) -> np.ndarray:
    """Per target over sources (``across_models``) or per source over targets (``across_shifts``)."""
    if protocol == "across_shifts":
        score, truth = score.T, truth.T
    return np.array([_corr(score[:, j], truth[:, j], how) for j in range(score.shape[1])])


def summarise(values: np.ndarray, idx: np.ndarray) -> dict[str, Any]:
    """Mean over units and its 95% percentile bootstrap interval over resampled units (``idx: [B, U]``)."""
    if np.all(np.isnan(values)):
        return {"mean": None, "ci": [None, None], "n_units": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample of NaN units only
        boots = np.nanmean(values[idx], axis=1)
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return {
        "mean": float(np.nanmean(values)),
        "ci": [float(lo), float(hi)],
        "n_units": int((~np.isnan(values)).sum()),
    }


def evaluate(
    scores: dict[str, np.ndarray], truths: dict[str, np.ndarray], cfg: Config
) -> dict[str, dict[str, Any]]:
    """weightedtau / spearman per score, protocol and truth, and gaps of RESQUE over every other score."""
    rng = np.random.default_rng(cfg.seed)
    ns, nt = next(iter(truths.values())).shape
    idx = {
        "across_models": rng.integers(0, nt, (cfg.boot, nt)),
        "across_shifts": rng.integers(0, ns, (cfg.boot, ns)),
    }
    out: dict[str, dict[str, Any]] = {"weightedtau": {}, "spearman": {}, "gap_weightedtau": {}}
    units: dict[tuple[str, str, str], np.ndarray] = {}
    for how in ("weightedtau", "spearman"):
        for name, s in scores.items():
            out[how][name] = {p: {} for p in idx}
            for p, i in idx.items():
                for t, truth in truths.items():
                    v = unit_correlations(s, truth, p, how)
                    if how == "weightedtau":
                        units[(name, p, t)] = v
                    out[how][name][p][t] = {
                        **summarise(v, i),
                        "per_unit": [None if np.isnan(a) else a for a in v],
                    }
    for ours in ("resque_dist", "resque"):
        for other in scores:
            if other == ours or other.startswith("resque"):
                continue
            out["gap_weightedtau"][f"{ours}-{other}"] = {
                p: {t: summarise(units[(ours, p, t)] - units[(other, p, t)], i) for t in truths}
                for p, i in idx.items()
            }
    return out


def fitted_scores(
    scores: dict[str, np.ndarray], truths: dict[str, np.ndarray], groups: dict[str, np.ndarray], cfg: Config
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Ridge fits of log fine-tuning epochs from [-resque, source accuracy, log size], one group left out."""
    x = np.stack([scores[k].ravel() for k in ("resque", "source_accuracy", "size")], 1)
    y = np.log(-truths["finetune_epochs"].ravel())  # epochs, a miss at the budget + 1
    preds, mae = {}, {}
    for name, g in groups.items():
        pred = np.full(len(y), np.nan)
        for held in np.unique(g):
            tr, te = g != held, g == held
            mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-12
            a = np.c_[np.ones(tr.sum()), (x[tr] - mu) / sd]
            w = np.linalg.solve(a.T @ a + 1e-2 * np.eye(a.shape[1]), a.T @ y[tr])
            pred[te] = np.c_[np.ones(te.sum()), (x[te] - mu) / sd] @ w
        preds[f"fitted_{name}"] = -pred.reshape(truths["finetune_epochs"].shape)  # higher = cheaper
        mae[f"fitted_{name}"] = float(np.mean(np.abs(np.exp(pred) - np.exp(y))))
    return preds, mae


# ------------------------------------------------------------------------- NTK screening evaluation (b)
NTK_SCORES = (
    "ntk_score", "ntk_accuracy", "decision", "neg_rho", "ntk_score_flm", "ntk_accuracy_flm", "decision_flm",
    "neg_rho_flm", "ntk_gain_flm",
)  # fmt: skip
NTK_BASELINES = (
    "zero_step_accuracy", "linear_probe_logits", "logme_logits", "source_accuracy", "leep", "nce",
    "knn_accuracy", "linear_probe", "logme", "size", "probe_gain",
)  # fmt: skip
NTK_FITTED = {  # logistic fits of "reprogramming beats the probe", one source family left out
    "logistic_ntk": ("ntk_score_flm", "ntk_accuracy_flm", "linear_probe"),
    "logistic_baselines": ("zero_step_accuracy", "linear_probe_logits", "source_accuracy", "linear_probe"),
    "logistic_ntk_and_baselines": (
        "ntk_score_flm", "ntk_accuracy_flm", "zero_step_accuracy", "linear_probe_logits", "source_accuracy",
        "linear_probe",
    ),
}  # fmt: skip
NTK_OURS = (
    *NTK_SCORES, "logistic_ntk", "logistic_ntk_balanced", "logistic_ntk_and_baselines",
    "logistic_ntk_and_baselines_balanced", "threshold_ntk_score_flm",
)  # fmt: skip
NTK_OTHERS = (
    *NTK_BASELINES, "logistic_baselines", "logistic_baselines_balanced", "threshold_linear_probe_logits",
    "threshold_logme_logits",
)  # fmt: skip


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the boolean ``label`` (ties count one half); NaN if one class."""
    pos, neg = int(label.sum()), int((~label).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = stats.rankdata(score)
    return float((ranks[label].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(stats.rankdata(x), stats.rankdata(y))[0, 1])


def _logistic(x: np.ndarray, y: np.ndarray, balanced: bool, l2: float = 1.0, steps: int = 50) -> np.ndarray:
    """L2-penalised logistic regression by Newton steps (intercept unpenalised); weights ``[1 + D]``.

    ``balanced``: each class weighs half, so the intercept does not carry the training families' base rate.
    """
    a = np.c_[np.ones(len(x)), x]
    w, pen = np.zeros(a.shape[1]), l2 * np.diag([0.0] + [1.0] * x.shape[1])
    sw = np.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean())) if balanced else np.ones(len(y))
    for _ in range(steps):
        p = 1 / (1 + np.exp(-a @ w))
        hess = a.T @ (a * (sw * p * (1 - p))[:, None]) + pen + 1e-9 * np.eye(len(w))
        w = w - np.linalg.solve(hess, a.T @ (sw * (p - y)) + pen @ w)
    return w


def ntk_table(runs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per pair (in run order): every NTK score, baseline and the truth of question (b)."""
    col: dict[str, np.ndarray] = {}
    for k in ("ntk_score", "ntk_accuracy", "decision", "ntk_score_flm", "ntk_accuracy_flm", "decision_flm"):
        col[k] = np.array([r["ntk"][k] for r in runs])
    col["neg_rho"] = -np.array([r["ntk"]["rho"] for r in runs])
    col["neg_rho_flm"] = -np.array([r["ntk"]["rho_flm"] for r in runs])
    for k in ("zero_step_accuracy", "linear_probe_logits", "logme_logits"):
        col[k] = np.array([r["ntk"][k] for r in runs])
    for k in ("source_accuracy", "leep", "nce", "knn_accuracy", "linear_probe", "logme", "size"):
        col[k] = np.array([r["scores"][k] for r in runs])
    # parameter-free "gain" forms: predicted reprogramming accuracy minus the probe's (feature) accuracy
    col["ntk_gain_flm"] = col["ntk_accuracy_flm"] - col["linear_probe"]
    col["probe_gain"] = col["linear_probe_logits"] - col["linear_probe"]
    col["gain"] = np.array([r["reprogram_acc"] - r["probe_acc"] for r in runs])
    col["beats"] = col["gain"] > 0
    return col


def _lofo(col: dict[str, np.ndarray], fams: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Held-out-family predictions of the fitted rules: logistic fits, and a threshold per raw score."""
    beats, preds, thresholds = col["beats"], {}, {}
    for (name, keys), balanced in itertools.product(NTK_FITTED.items(), (False, True)):
        x, pred = np.stack([col[k] for k in keys], 1), np.full(len(beats), np.nan)
        for held in np.unique(fams):
            tr, te = fams != held, fams == held
            mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-12
            if beats[tr].all() or not beats[tr].any():
                pred[te] = float(beats[tr].mean())
                continue
            w = _logistic((x[tr] - mu) / sd, beats[tr].astype(float), balanced)
            pred[te] = np.c_[np.ones(te.sum()), (x[te] - mu) / sd] @ w
        preds[f"{name}_balanced" if balanced else name] = pred
    for name in (*NTK_SCORES, *NTK_BASELINES):  # "beats" iff score >= t, t maximising balanced accuracy
        s, hit, chosen = col[name], np.zeros(len(beats), bool), {}
        for held in np.unique(fams):
            tr, te = fams != held, fams == held
            cands = np.unique(s[tr])
            bal = [_balanced(s[tr] >= t, beats[tr]) for t in cands]
            t = float(cands[int(np.nanargmax(bal))]) if np.any(np.isfinite(bal)) else float(np.median(s[tr]))
            hit[te], chosen[str(held)] = s[te] >= t, t
        preds[f"threshold_{name}"] = hit.astype(float)
        thresholds[name] = chosen
    return preds, thresholds


def _balanced(pred: np.ndarray, truth: np.ndarray) -> float:
    if truth.all() or not truth.any():
        return float("nan")
    return float(0.5 * (pred[truth].mean() + (~pred[~truth]).mean()))


def _boot_summary(point: float, boots: np.ndarray) -> dict[str, Any]:
    ok = boots[np.isfinite(boots)]
    lo, hi = np.percentile(ok, [2.5, 97.5]) if len(ok) else (np.nan, np.nan)
    clean = [None if not np.isfinite(v) else float(v) for v in (point, lo, hi)]
    return {"value": clean[0], "ci": clean[1:], "n_boot": int(len(ok))}


def ntk_screening(cfg: Config, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Question (b) on all pairs, and again without the random-weight controls (``trained_sources``)."""
    out = _ntk_evaluate(runs, cfg)
    trained = [r for r in runs if r["family"] != "random"]
    if len({r["family"] for r in trained}) > 1:
        out["trained_sources"] = _ntk_evaluate(trained, cfg)
    return out


def _ntk_evaluate(runs: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """AUROC for "reprogramming beats the probe" and Spearman with the gain, with intervals and gaps.

    Raw scores need no fitting (their pooled AUROC is already out of sample); the fitted rules (logistic
    fits, thresholds) are fitted leaving one source family out and evaluated on the held-out family, pooled.
    95% percentile bootstrap over sources: a resample draws the sources with replacement and keeps all of
    each drawn source's pairs (pairs clustered by source; the fitted rules are not refitted per resample).
    Gaps (an NTK score minus a baseline) use the same resamples.
    """
    col = ntk_table(runs)
    fams = np.array([r["family"] for r in runs])
    src = np.array([r["s"] for r in runs])
    fitted, thresholds = _lofo(col, fams)
    scores = {**{k: col[k] for k in (*NTK_SCORES, *NTK_BASELINES)}, **fitted}
    beats, gain = col["beats"], col["gain"]
    rng = np.random.default_rng(cfg.seed)
    by_source = [np.flatnonzero(src == s) for s in np.unique(src)]
    draws = rng.integers(0, len(by_source), (cfg.boot, len(by_source)))
    metrics = {"auroc": auroc, "spearman": _spearman}
    point = {
        m: {k: fn(v, beats if m == "auroc" else gain) for k, v in scores.items()} for m, fn in metrics.items()
    }
    boots = {m: {k: np.full(cfg.boot, np.nan) for k in scores} for m in metrics}
    for b, d in enumerate(draws):
        i = np.concatenate([by_source[s] for s in d])
        for m, fn in metrics.items():
            truth = beats[i] if m == "auroc" else gain[i]
            for k, v in scores.items():
                boots[m][k][b] = fn(v[i], truth)
    out: dict[str, Any] = {
        "truth": "reprogram_acc > probe_acc (final test accuracy at the budget); gain = the difference",
        "bootstrap": "95% percentile; resamples sources with replacement, all pairs of a drawn source kept",
        "n_pairs": len(runs),
        "n_sources": len(by_source),
        "n_beats": int(beats.sum()),
        "n_ties": int((gain == 0).sum()),
        "num_samples": int(runs[0]["ntk"]["n"]),
        "flm_feasible_pairs": int(sum(r["ntk"]["flm_feasible"] for r in runs)),
        "seconds_per_pair": {
            "model": float(np.mean([r["ntk"]["seconds_model"] for r in runs])),
            "flm": float(np.mean([r["ntk"]["seconds_flm"] for r in runs])),
            "total": float(sum(r["ntk"]["seconds_model"] + r["ntk"]["seconds_flm"] for r in runs)),
        },
        "lofo_thresholds": thresholds,
    }
    for m in metrics:
        out[m] = {k: _boot_summary(point[m][k], boots[m][k]) for k in scores}
        out[f"gap_{m}"] = {
            f"{ours}-{other}": _boot_summary(
                point[m][ours] - point[m][other], boots[m][ours] - boots[m][other]
            )
            for ours in NTK_OURS
            for other in NTK_OTHERS
        }
    families = [str(f) for f in np.unique(fams)]
    out["per_family_beats"] = {f: [int(beats[fams == f].sum()), int((fams == f).sum())] for f in families}
    out["per_family_auroc"] = {  # within one family (no interval; NaN where the family has one class)
        k: {f: _clean(auroc(v[fams == f], beats[fams == f])) for f in families} for k, v in scores.items()
    }
    out["answer"] = ntk_answer(out)
    return out


def _clean(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def ntk_answer(res: dict[str, Any]) -> dict[str, Any]:
    """Per NTK score: AUROC, the goal (>= 0.85), the best baseline, and whether it beats every baseline."""
    out = {}
    for ours in NTK_OURS:
        a = res["auroc"][ours]
        gaps = {b: res["gap_auroc"][f"{ours}-{b}"] for b in NTK_OTHERS}
        gaps = {b: g for b, g in gaps.items() if g["value"] is not None}
        best = max(gaps, key=lambda b: res["auroc"][b]["value"]) if gaps else None
        out[ours] = {
            "auroc": a["value"],
            "ci": a["ci"],
            "goal_0.85_point": a["value"] is not None and a["value"] >= 0.85,
            "best_baseline": best,
            "best_baseline_auroc": None if best is None else res["auroc"][best]["value"],
            "beats_every_baseline_point": bool(gaps) and all(g["value"] > 0 for g in gaps.values()),
            "beats_every_baseline_ci": bool(gaps)
            and all(g["ci"][0] is not None and g["ci"][0] > 0 for g in gaps.values()),
        }
    return out


# ------------------------------------------------------------------------------------------------------- runs
#: What one pair's run depends on besides its source: stored runs are reused only where all of these match.
RUN_SETTINGS = (
    "targets",
    "epochs",
    "source_epochs",
    "lr_finetune",
    "lr_probe",
    "lr_additive",
    "side_width",
    "batch_size",
    "seed",
    "ntk_samples",
    "device",
)


def run_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The :data:`RUN_SETTINGS` of a stored configuration (a field it predates takes its default)."""
    defaults = {f.name: f.default for f in fields(Config)}
    return {k: config.get(k, defaults.get(k)) for k in RUN_SETTINGS}


def window_key(device: str) -> str:
    """The run field holding the strategies' windows on ``device`` (see :func:`windows_meter`)."""
    return CPUWindows.key if torch.device(device).type == "cpu" else GPUWindows.key


def stored_runs(cfg: Config, old: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The runs of an earlier result that ``cfg`` would compute identically, per source name (``--reuse``).

    A source's runs are kept when the torch version, the :data:`RUN_SETTINGS` and the source's specification
    are the same and every target has a screened run with every strategy and its CPU seconds (each pair is
    seeded on its own, so a pair does not depend on the other sources). Epochs to target and Wh are
    recomputed: the goal depends on every source.
    """
    if old.get("torch") != torch.__version__ or run_settings(old["config"]) != run_settings(asdict(cfg)):
        return {}
    key, targets = window_key(cfg.device), list(range(len(cfg.targets)))
    mine = {
        name: [r for r in runs if "ntk" in r and key in r] for name, runs in results_pairs(cfg, old).items()
    }
    return {name: runs for name, runs in mine.items() if [r["t"] for r in runs] == targets}


def results_pairs(cfg: Config, old: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """A results JSON's runs per source name, for the sources ``cfg`` has (in target order; no checks)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(old["runs"], key=lambda r: r["t"]):
        spec = old["config"]["sources"][r["s"]]
        if spec in cfg.sources:
            out.setdefault(spec["name"], []).append(r)
    return out


def checkpoint_path(stem: Path) -> Path:
    """The runs file beside the results: one JSON line per finished pair, written as the grid runs."""
    return stem.with_name(stem.name + ".runs.jsonl")


def checkpoint_line(cfg: Config, run: dict[str, Any]) -> str:
    """One finished pair with what it depends on (torch, settings, the source's specification, the device)."""
    line = {"torch": torch.__version__, "machine": machine(cfg), "settings": run_settings(asdict(cfg))}
    return json.dumps(line | {"spec": cfg.sources[run["s"]], "run": run}, default=float)


def checkpoint_runs(cfg: Config, path: Path, same_torch: bool = True) -> dict[str, list[dict[str, Any]]]:
    """The finished pairs in a runs file that ``cfg`` would compute identically, per source name.

    A pair is kept when the settings, the source's specification and the target's name match (and the torch
    version, unless ``same_torch=False``: re-analysing runs made elsewhere); a later line replaces an earlier
    one of the same pair. Unlike :func:`stored_runs`, a source may have only some of its targets.
    """
    if not path.exists():
        return {}
    now, kept = run_settings(asdict(cfg)), {}
    for text in path.read_text().splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:  # a line cut short when a run was stopped
            continue
        run, spec = line["run"], line["spec"]
        t = run["t"]
        if (
            line["settings"] != now
            or spec not in cfg.sources
            or t >= len(cfg.targets)
            or cfg.targets[t]["name"] != run["target"]
            or (same_torch and line["torch"] != torch.__version__)
        ):
            continue
        kept[(spec["name"], t)] = run | {"torch": line["torch"], "machine": line["machine"]}
    out: dict[str, list[dict[str, Any]]] = {}
    for (name, _), run in sorted(kept.items(), key=lambda kv: kv[0][1]):
        out.setdefault(name, []).append(run)
    return out


def machine(cfg: Config, jobs: int = 1) -> str:
    """The hardware a configuration's runs were made on, as the results state it."""
    if torch.device(cfg.device).type == "cuda":
        return f"one {torch.cuda.get_device_name(cfg.device)}, 1 process"
    return MACHINE if jobs == 1 else f"2-core CPU, {jobs} processes of 1 thread"


def _pair_run(cfg: Config, s: int, t: int, net: nn.Module, tgt: dict[str, Tensor]) -> dict[str, Any]:
    """Scores, ground truth and NTK screening of one (source, target) pair (seeded: the same in any process)."""
    spec, tspec = cfg.sources[s], cfg.targets[t]
    pair_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    run = {"s": s, "t": t, "source": spec["name"], "family": spec["family"], "target": tspec["name"]}
    run |= {"type": tspec["type"], "scores": score_pair(net, tgt)}
    key = windows_meter(cfg.device).key  # "cpu_seconds" or "gpu_joules"
    run["curves"], run[key], run["additive_start_acc"] = ground_truth(net, tgt, cfg)
    run["ntk"] = screen_pair(net, tgt, cfg)  # after the ground truth, which it leaves unchanged
    return run | {"seconds": time.perf_counter() - pair_start}


_WORKER: dict[str, Any] = {}  # per worker process: the last source built and the targets made


def _worker_pair(job: tuple[Config, int, int]) -> dict[str, Any]:
    cfg, s, t = job
    torch.set_num_threads(1)
    if _WORKER.get("source") != (id(cfg), s):  # jobs arrive grouped by source: build each once per worker
        _WORKER.update(source=(id(cfg), s), net=build_source(cfg.sources[s], cfg))
    targets = _WORKER.setdefault("targets", {})
    if t not in targets:
        targets[t] = make_targets(cfg, [t])[0]
    return _pair_run(cfg, s, t, _WORKER["net"], targets[t])


def run_grid(
    cfg: Config,
    reuse: dict[str, list[dict[str, Any]]] | None = None,
    jobs: int = 1,
    checkpoint: Path | None = None,
) -> list[dict[str, Any]]:
    """Scores and ground truth for every (source, target) pair; epochs to target filled in afterwards.

    ``reuse``: stored runs per source name (see :func:`stored_runs`, :func:`checkpoint_runs`), taken instead
    of computing them; a source may have only some of its targets there. ``jobs``: worker processes (one torch
    thread each) sharing the pairs; every pair is seeded on its own, so the runs are the same as with one
    process. ``checkpoint``: a runs file (:func:`checkpoint_path`) each finished pair is appended to, so a
    stopped run loses at most the pair in progress (``--reuse`` picks the file up).
    """
    if jobs > 1 and torch.device(cfg.device).type != "cpu":
        raise ValueError(
            f"--jobs {jobs} on {cfg.device!r}: the GPU's energy counter is the whole GPU's, so workers sharing it "
            "would count each other. HINT: run a GPU configuration with --jobs 1."
        )
    targets = make_targets(cfg)
    runs, todo = [], []
    for s, spec in enumerate(cfg.sources):
        have = {r["t"]: {**r, "s": s} for r in (reuse or {}).get(spec["name"], [])}
        runs += list(have.values())
        todo += [(s, t) for t in range(len(targets)) if t not in have]
        if have:
            print(f"  {spec['name']:32s} {len(have)} of {len(targets)} targets reused", flush=True)
    # the costliest sources (ImageNet models) first: workers finish together, a stopped run keeps the most
    todo.sort(key=lambda st: (cfg.sources[st[0]]["family"] != "imagenet", st))
    out = checkpoint.open("a") if checkpoint is not None else None

    def done(run: dict[str, Any]) -> None:
        runs.append(run)
        print(f"  {run['source']:32s} {run['target']:24s} {run['seconds']:6.1f} s", flush=True)
        if out is not None:
            out.write(checkpoint_line(cfg, run) + "\n")
            out.flush()

    try:
        if jobs > 1 and todo:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            work = [(cfg, s, t) for s, t in todo]
            with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
                for run in pool.map(_worker_pair, work):
                    done(run)
        else:
            net, built = None, None
            for s, t in todo:
                if built != s:
                    net, built = build_source(cfg.sources[s], cfg), s
                done(_pair_run(cfg, s, t, net, targets[t]))  # type: ignore[arg-type]
    finally:
        if out is not None:
            out.close()
    runs.sort(key=lambda r: (r["s"], r["t"]))
    fill_epochs(runs, len(targets), cpu_power_model()["w_per_cpu_s"])
    return runs


def fill_epochs(runs: list[dict[str, Any]], num_targets: int, w_per_cpu_s: float | None = None) -> None:
    """Final accuracy, the goal, epochs to the goal and (with a power model) Wh, per run and strategy (in place).

    ``w_per_cpu_s``: watts per busy CPU (see :func:`cpu_power_model`; runs measured in GPU joules need none);
    ``{strategy}_wh_curve`` is the
    cumulative Wh after each epoch (setup included), ``_wh`` its last value, ``_wh_to`` its value at the epoch
    that reaches the goal (``None``: censored, exactly when ``_epochs`` is).
    """
    for t in range(num_targets):  # the target: 90% of the best source's final accuracy, per strategy
        for strategy in STRATEGIES:
            mine = [r for r in runs if r["t"] == t]
            goal = 0.9 * max(r["curves"][strategy][-1] for r in mine)
            for r in mine:
                r[f"{strategy}_acc"] = r["curves"][strategy][-1]
                r[f"{strategy}_goal"] = goal
                r[f"{strategy}_epochs"] = epochs = epochs_to(r["curves"][strategy], goal)
                if "gpu_joules" in r:  # joules: 1 W s each
                    curve = wh_curve(r["gpu_joules"][strategy], 1.0)
                elif w_per_cpu_s is not None and "cpu_seconds" in r:
                    curve = wh_curve(r["cpu_seconds"][strategy], w_per_cpu_s)
                else:
                    continue
                r[f"{strategy}_wh_curve"] = curve
                r[f"{strategy}_wh"] = curve[-1]
                r[f"{strategy}_wh_to"] = None if epochs is None else curve[epochs - 1]


def wh_curve(cpu: dict[str, Any], w_per_cpu_s: float) -> list[float]:
    """Cumulative Wh after each epoch: (setup + epochs so far) CPU seconds x watts per busy CPU / 3600 (GPU
    joules with ``w_per_cpu_s = 1``)."""
    seconds = cpu["setup"] + np.cumsum(cpu["epochs"])
    return [float(v) * w_per_cpu_s / 3600.0 for v in seconds]


@functools.cache
def cpu_power_model() -> dict[str, Any]:
    """Watts per busy CPU as codecarbon's process mode estimates them on a CPU without RAPL: ``TDP / CPUs``.

    codecarbon 3.x (``external/hardware.py``, ``CPU._get_power_from_cpu_load``, ``tracking_mode="process"``):
    ``power = TDP x (process CPU seconds / wall seconds) / CPUs``, so a window's energy is
    ``TDP / CPUs x CPU seconds``. TDP: codecarbon's table entry for this CPU model (``codecarbon.core.cpu.TDP``;
    its default when the model is unknown), CPUs: ``codecarbon.core.util.count_cpus``. Nothing is started and
    nothing reaches the network. ``None`` fields where codecarbon cannot be imported (then no Wh is computed).
    """
    import logging

    try:
        import codecarbon
        from codecarbon.core.cpu import TDP
        from codecarbon.core.util import count_cpus
        from codecarbon.external.hardware import POWER_CONSTANT

        logging.getLogger("codecarbon").setLevel("ERROR")  # its "unknown CPU model" warning: recorded below
        tdp = TDP()
        cpus = int(count_cpus())
        watts = float(tdp.tdp) if tdp.tdp else float(POWER_CONSTANT)
        listed = tdp.model != "Unknown" and tdp._get_cpu_power_from_registry(tdp.model) is not None
    except Exception as err:  # a measurement never stops the benchmark
        return {"w_per_cpu_s": None, "error": f"{type(err).__name__}: {err}"}
    how = (
        "its CPU table's TDP for this model"
        if listed
        else "no table entry for this model: its default power per CPU thread x threads"
        if tdp.tdp
        else "no CPU detected: its constant TDP"
    )
    return {
        "w_per_cpu_s": watts / cpus,
        "cpu_tdp_w": watts,
        "cpu_count": cpus,
        "cpu_model": tdp.model,
        "tdp_from": how,
        "source": f"codecarbon {codecarbon.__version__} (TDP: {how}); process-mode CPU power "
        "TDP x CPU-seconds / wall-seconds / CPUs (codecarbon/external/hardware.py), so Wh = CPU-seconds x "
        "TDP / CPUs / 3600; RAM and GPU not counted",
    }


def _cpu_seconds_now() -> float:
    """CPU seconds (user + system) of this process and of its waited-for child processes so far."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def start_run_meter() -> tuple[Any, float]:
    """The library's ``EnergyMeter`` over codecarbon's offline tracker in process mode, started before the runs.

    It measures this process and its worker processes (codecarbon's process mode follows the children) and
    never reaches the network (``OfflineEmissionsTracker``, country given: it only sets the CO2 figure).
    Returns the meter and the CPU seconds so far (see :func:`stop_run_meter`).
    """
    from lightning_reuse.energy import CodeCarbonBackend, EnergyMeter

    backend = CodeCarbonBackend(country_iso_code="USA", tracking_mode="process", measure_power_secs=5.0)
    meter = EnergyMeter(backend)
    with warnings.catch_warnings():  # a failure is kept in the meter's status, never raised
        warnings.simplefilter("ignore")
        meter.start()
    return meter, _cpu_seconds_now()


def stop_run_meter(meter: Any, cpu0: float, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole run's energy by codecarbon beside the power model's Wh of the same CPU seconds, and the
    strategies' own windows' Wh (a part of it: the scores, the NTK screening and the test evaluation are not in
    the windows; reused runs are not in this run)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = meter.stop()
    cpu = _cpu_seconds_now() - cpu0
    w = cpu_power_model()["w_per_cpu_s"]
    return {
        "codecarbon_status": meter.status,
        "codecarbon_cpu_wh": record.cpu_wh,
        "codecarbon_ram_wh": record.ram_wh,
        "codecarbon_methods": dict(record.method),
        "duration_s": record.duration_s,
        "cpu_seconds": cpu,
        "model_cpu_wh": None if w is None else cpu * w / 3600.0,
        "strategy_windows_wh": windows_wh(runs),
    }


def windows_wh(runs: list[dict[str, Any]]) -> float:
    """Wh of the strategies' windows summed over runs and strategies (a part of a whole run's energy)."""
    return float(sum(r[f"{st}_wh"] for r in runs for st in STRATEGIES if r.get(f"{st}_wh") is not None))


def energy_section(runs: list[dict[str, Any]], whole_run: dict[str, Any] | None) -> dict[str, Any]:
    """How Wh was measured (stored in the JSON, shown in the markdown)."""
    return {
        **cpu_power_model(),
        "windows": "per strategy: setup (model copy; the probe's training features; the additive base's outputs "
        "on the training part) and each epoch's training loop, process CPU seconds (time.process_time, this "
        "process only); the per-epoch test evaluation is not counted",
        "wh_to_censored_at": censored_wh(runs),
        "whole_run": whole_run,
    }


WINDOWS = (
    "per strategy: setup (model copy; the probe's training features; the additive base's outputs on the training "
    "part) and each epoch's training loop"
)


def gpu_energy_section(runs: list[dict[str, Any]], records: list[dict[str, Any]]) -> dict[str, Any]:
    """How Wh was measured on a GPU (NVML), with one record per invocation that made runs (see main)."""
    return {
        "unit": "gpu_joules",
        "source": "NVML's total-energy counter of the whole GPU (nvmlDeviceGetTotalEnergyConsumption, the "
        "counter codecarbon reads for an NVIDIA GPU), read after torch.cuda.synchronize() at each window's "
        "edges; GPU only (the host's CPU and RAM are not counted); one process, so nothing else ran on the GPU",
        "windows": f"{WINDOWS}; the per-epoch test evaluation is not counted",
        "wh_to_censored_at": censored_wh(runs),
        "invocations": records,
    }


def gpu_run_record(
    cfg: Config, joules0: float, start: float, new_runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """One invocation on a GPU: the counter over the whole invocation beside the sum of its runs' windows."""
    meter = windows_meter(cfg.device)
    assert isinstance(meter, GPUWindows)
    return {
        "machine": machine(cfg),
        "torch": torch.__version__,
        "pairs": len(new_runs),
        "duration_s": time.perf_counter() - start,
        "nvml_gpu_wh": (meter.read() - joules0) / 3600.0,
        "strategy_windows_wh": windows_wh(new_runs),
        "counter_update": meter.update_interval(),
        "method": meter.method,
    }


def score_matrices(runs: list[dict[str, Any]], ns: int, nt: int) -> dict[str, np.ndarray]:
    """``[source, target]`` matrices of every score."""
    out = {k: np.full((ns, nt), np.nan) for k in SCORES}
    for r in runs:
        for k in SCORES:
            out[k][r["s"], r["t"]] = r["scores"][k]
    return out


def _cell(entry: dict[str, Any]) -> str:
    if entry["mean"] is None:
        return "-"
    lo, hi = entry["ci"]
    return f"{entry['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _table(title: str, per_score: dict[str, Any]) -> list[str]:
    """One markdown table: a row per score, a column per protocol and truth, ``mean [low, high]``."""
    cols = [(p, t) for p in ("across_models", "across_shifts") for t in TRUTHS]
    out = [f"## {title}", "", "| score | " + " | ".join(f"{p} {t}" for p, t in cols) + " |"]
    out.append("|---|" + "---|" * len(cols))
    out += [
        f"| {name} | " + " | ".join(_cell(per[p][t]) for p, t in cols) + " |"
        for name, per in per_score.items()
    ]
    return [*out, ""]


def _answer_lines(answers_: dict[str, Any]) -> list[str]:
    out = ["## answers (weightedtau; a gap counts when its 95% CI is above 0)", ""]
    for key, a in answers_.items():
        if a.get("rank") is not None:
            out.append(f"- {key}: {a['rank']} of {a['of']}")
        elif a.get("tau") is not None:
            out.append(
                f"- {key}: {a['tau']:+.2f} [{a['ci'][0]:+.2f}, {a['ci'][1]:+.2f}]; best baseline "
                f"{a['best_baseline']} {a['best_baseline_tau']:+.2f}; beats every baseline: point "
                f"{a['beats_every_baseline']}, CI {a['beats_every_baseline_ci']}"
            )
    return out


def _ci(entry: dict[str, Any], fmt: str = "+.2f") -> str:
    if entry["value"] is None:
        return "-"
    lo, hi = entry["ci"]
    return f"{entry['value']:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def _ntk_lines(res: dict[str, Any]) -> list[str]:
    """Markdown: AUROC / Spearman per score, the NTK scores' gaps over the baselines, the answer."""
    t = res["seconds_per_pair"]
    out = [
        "## NTK screening: does it rank reprogramming's gain over the linear probe? (issue 15, question b)",
        "",
        f"Truth: {res['truth']}; {res['n_beats']} of {res['n_pairs']} pairs beat the probe "
        f"({res['n_ties']} ties, counted as not beating). Screening on {res['num_samples']} stratified samples "
        f"of each target's training part; FLM feasible on {res['flm_feasible_pairs']} pairs; "
        f"{t['model']:.2f} s (model mapping) + {t['flm']:.2f} s (FLM) per pair, {t['total']:.0f} s in all. "
        f"Intervals: {res['bootstrap']}. Fitted rules: one source family left out, pooled over held-out families.",
        "",
        "| score | AUROC (beats the probe) | Spearman (gain) |",
        "|---|---|---|",
    ]
    out += [f"| {k} | {_ci(res['auroc'][k])} | {_ci(res['spearman'][k])} |" for k in res["auroc"]]
    trained = res.get("trained_sources")
    if trained is not None:
        out += [
            "",
            f"### without the random-weight controls ({trained['n_pairs']} pairs, {trained['n_beats']} beat the "
            "probe; fitted rules refitted on these families)",
            "",
            "| score | AUROC (beats the probe) | Spearman (gain) |",
            "|---|---|---|",
        ]
        out += [
            f"| {k} | {_ci(trained['auroc'][k])} | {_ci(trained['spearman'][k])} |" for k in trained["auroc"]
        ]
    out += ["", "### AUROC gap, NTK score minus baseline (same resamples)", ""]
    out += ["| NTK score | " + " | ".join(NTK_OTHERS) + " |", "|---|" + "---|" * len(NTK_OTHERS)]
    out += [
        f"| {o} | " + " | ".join(_ci(res["gap_auroc"][f"{o}-{b}"]) for b in NTK_OTHERS) + " |"
        for o in NTK_OURS
    ]
    out += ["", "### answer (goal: AUROC >= 0.85 and ahead of every baseline)", ""]
    for k, a in res["answer"].items():
        if a["auroc"] is None or a["best_baseline"] is None:
            out.append(f"- {k}: undefined (one class only)")
            continue
        out.append(
            f"- {k}: AUROC {a['auroc']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]; goal 0.85 reached (point): "
            f"{a['goal_0.85_point']}; best baseline {a['best_baseline']} {a['best_baseline_auroc']:.3f}; ahead of "
            f"every baseline: point {a['beats_every_baseline_point']}, CI {a['beats_every_baseline_ci']}"
        )
    return [*out, ""]


def _source_lines(result: dict[str, Any]) -> list[str]:
    """The sources run, those skipped (packages not installed) and those whose runs were reused."""
    cfg = result["config"]
    families: dict[str, int] = {}
    for spec in cfg["sources"]:
        families[spec["family"]] = families.get(spec["family"], 0) + 1
    fams = ", ".join(f"{f} {n}" for f, n in families.items())
    out = [f"Sources: {len(cfg['sources'])} ({fams}); targets: {len(cfg['targets'])}; runs took "
           f"{result['elapsed_s']:.0f} s."]  # fmt: skip
    timed: dict[str, float] = {}
    for r in result["runs"]:
        if "seconds" in r:
            timed[r["source"]] = timed.get(r["source"], 0.0) + r["seconds"]
    if timed:
        out += [
            "Seconds per source, where recorded: " + ", ".join(f"{k} {v:.0f}" for k, v in timed.items()) + "."
        ]
    skipped = result.get("skipped_sources") or []
    out += [f"Skipped sources: {'none' if not skipped else len(skipped)}."]
    out += [f"- {s['name']}: {s['reason']}" for s in skipped]
    reused = result.get("reused")
    if reused:
        out += [
            f"Reused runs (same torch, settings and targets; from the earlier run, {reused['earlier_elapsed_s']:.0f} "
            f"s): {', '.join(reused['sources'])}; the other sources' pairs took {reused['new_pairs_s']:.0f} s."
        ]
    return out


def _energy_lines(result: dict[str, Any]) -> list[str]:
    """How Wh was measured, the median Wh per strategy, and the whole run by codecarbon beside the model."""
    energy = result.get("energy")
    if energy and energy.get("unit") == "gpu_joules":
        return _gpu_energy_lines(result, energy)
    if not energy or energy.get("w_per_cpu_s") is None:
        return ["## energy", "", "Not measured (runs stored before the energy was measured).", ""]
    out = [
        "## energy (the `_wh` and `_wh_to` truths)",
        "",
        f"Wh = process CPU seconds x {energy['w_per_cpu_s']:.2f} W per busy CPU / 3600: {energy['source']}. "
        f"CPU: {energy['cpu_model']}, {energy['cpu_count']} CPUs, TDP {energy['cpu_tdp_w']:.0f} W. Windows: "
        f"{energy['windows']}. A run that misses the target is ranked at {energy['wh_to_censored_at']:.3g} Wh "
        "(twice the largest budget, below every hit; misses tied).",
        "",
        "| strategy | median Wh (budget) | median Wh to target (hits) | hits |",
        "|---|---|---|---|",
    ]
    out += _wh_rows(result["runs"])
    whole = energy.get("whole_run")
    if whole:
        model = "-" if whole["model_cpu_wh"] is None else f"{whole['model_cpu_wh']:.3g}"
        out += [
            "",
            f"Whole run (this process and its workers, {whole['duration_s']:.0f} s, {whole['cpu_seconds']:.0f} CPU "
            f"seconds): codecarbon (EnergyMeter, OfflineEmissionsTracker in process mode; status "
            f"{whole['codecarbon_status']}) CPU {whole['codecarbon_cpu_wh']:.3g} Wh (RAM {whole['codecarbon_ram_wh']:.3g} "
            f"Wh, a heuristic, not counted here); the power model on the same CPU seconds {model} Wh; the "
            f"strategies' windows {whole['strategy_windows_wh']:.3g} Wh.",
        ]
    return [*out, ""]


def _wh_rows(runs: list[dict[str, Any]]) -> list[str]:
    out = []
    for st in STRATEGIES:
        whs = [r[f"{st}_wh"] for r in runs if r.get(f"{st}_wh") is not None]
        hits = [r[f"{st}_wh_to"] for r in runs if r.get(f"{st}_wh_to") is not None]
        to = f"{np.median(hits):.3g}" if hits else "-"
        out.append(f"| {st} | {np.median(whs):.3g} | {to} | {len(hits)} of {len(runs)} |")
    return out


def _gpu_energy_lines(result: dict[str, Any], energy: dict[str, Any]) -> list[str]:
    out = [
        "## energy (the `_wh` and `_wh_to` truths)",
        "",
        f"Wh = GPU joules / 3600: {energy['source']}. Windows: {energy['windows']}. A run that misses the target "
        f"is ranked at {energy['wh_to_censored_at']:.3g} Wh (twice the largest budget, below every hit; misses "
        "tied).",
        "",
        "| strategy | median Wh (budget) | median Wh to target (hits) | hits |",
        "|---|---|---|---|",
        *_wh_rows(result["runs"]),
        "",
    ]
    for rec in energy.get("invocations") or []:
        upd = rec["counter_update"]
        every = (
            "-"
            if upd["median_s"] is None
            else f"{1000 * upd['median_s']:.0f} ms (max {1000 * upd['max_s']:.0f} ms)"
        )
        out.append(
            f"- An invocation on {rec['machine']} (torch {rec['torch']}): {rec['pairs']} pairs in "
            f"{rec['duration_s']:.0f} s, the counter over it {rec['nvml_gpu_wh']:.3g} Wh, the strategies' windows "
            f"{rec['strategy_windows_wh']:.3g} Wh of it; the counter moved every {every} under load "
            f"({rec['method']})."
        )
    return [*out, ""]


def markdown(result: dict[str, Any]) -> str:
    """Tables: weighted tau (and Spearman) per score, protocol and truth; RESQUE's gaps over each score."""
    ci = "mean over units, 95% bootstrap CI over resampled configurations"
    inputs = result["input_shifts"]
    lines = [
        f"# Transferability zoo benchmark ({result['config']['name']}; {result.get('machine', MACHINE)})",
        "",
    ]
    lines += [*_source_lines(result), ""]
    lines += _table(f"weightedtau ({ci})", result["weightedtau"]) + _table(
        f"spearman ({ci})", result["spearman"]
    )
    lines += _table(
        "weightedtau gap, RESQUE minus another score (same resamples; all targets)", result["gap_weightedtau"]
    )
    lines += _table(
        "weightedtau gap, RESQUE minus another score (input-shift targets only)", inputs["gap_weightedtau"]
    )
    lines += _table(
        "weightedtau on the input-shift targets only (where RESQUE_dist is defined)", inputs["weightedtau"]
    )
    trained = result["input_shifts_trained"]["weightedtau"]
    lines += _table("weightedtau on the input-shift targets, random-weight controls left out", trained)
    lines += [f"Source family with the smallest RESQUE_dist: {inputs['least_shifted_family']}", ""]
    lines += [f"Censored (target missed within the budget): {result['censored_fraction']}", ""]
    lines += _energy_lines(result)
    lines += ["## fitted cost (ridge on log epochs), mean absolute error in epochs", ""]
    lines += [f"- {k}: {v:.2f}" for k, v in result["fitted_cost_mae_epochs"].items()]
    lines += ["", *_answer_lines(result["answers"]), ""]
    return "\n".join([*lines, *_ntk_lines(result["ntk_screening"])])


BASELINES = ("logme", "leep", "nce", "h_score", "knn_accuracy", "linear_probe", "source_accuracy", "size")


def answers(result: dict[str, Any]) -> dict[str, Any]:
    """Per RESQUE score, protocol and truth: its tau, the best baseline's, and whether it beats every baseline."""
    out: dict[str, Any] = {}
    for ours in (
        "resque_dist",
        "resque",
    ):  # RESQUE_dist against the baselines on the same (input-shift) targets
        res = result["input_shifts"] if ours == "resque_dist" else result
        tau = res["weightedtau"]
        for p in ("across_models", "across_shifts"):
            for t in TRUTHS:
                gaps = {b: res["gap_weightedtau"][f"{ours}-{b}"][p][t] for b in BASELINES}
                gaps = {b: g for b, g in gaps.items() if g["mean"] is not None}
                others = {b: tau[b][p][t]["mean"] for b in gaps}
                best = max(others, key=others.get) if others else None
                out[f"{ours} {p} {t}"] = {
                    "tau": tau[ours][p][t]["mean"],
                    "ci": tau[ours][p][t]["ci"],
                    "best_baseline": best,
                    "best_baseline_tau": None if best is None else others[best],
                    "beats_every_baseline": bool(gaps) and all(g["mean"] > 0 for g in gaps.values()),
                    "beats_every_baseline_ci": bool(gaps) and all(g["ci"][0] > 0 for g in gaps.values()),
                }
    tau = result["weightedtau"]
    for t in TRUTHS:  # where the data-free size ranking stands among all scores, across models
        ranked = sorted(
            (k for k in tau if tau[k]["across_models"][t]["mean"] is not None),
            key=lambda k: -tau[k]["across_models"][t]["mean"],
        )
        out[f"size rank across_models {t}"] = {
            "rank": ranked.index("size") + 1 if "size" in ranked else None,
            "of": len(ranked),
            "order": ranked,
        }
    return out


def analyse(
    cfg: Config, runs: list[dict[str, Any]], elapsed: float, made_on: str, torch_version: str
) -> dict[str, Any]:
    """Matrices, fitted scores (one group left out), correlations with intervals, gaps and answers."""
    ns, nt = len(cfg.sources), len(cfg.targets)
    scores, truths = score_matrices(runs, ns, nt), truth_matrices(runs, ns, nt, cfg)
    groups = {
        "loso": np.repeat(np.array([[t["type"] for t in cfg.targets]]), ns, 0).ravel(),
        "lofo": np.repeat(np.array([[s["family"] for s in cfg.sources]]).T, nt, 1).ravel(),
    }
    fitted, mae = fitted_scores(scores, truths, groups, cfg)
    result: dict[str, Any] = {"machine": made_on, "config": asdict(cfg), "torch": torch_version}
    result |= evaluate({**scores, **fitted}, truths, cfg)
    cols = ~np.all(np.isnan(scores["resque_dist"]), 0)  # RESQUE_dist's targets: input shifts only
    subset = (
        {k: v[:, cols] for k, v in {**scores, **fitted}.items()},
        {k: v[:, cols] for k, v in truths.items()},
    )
    result["input_shifts"] = {"targets": [t["name"] for t, c in zip(cfg.targets, cols) if c]}
    result["input_shifts"] |= evaluate(*subset, cfg)
    fams = np.array([src["family"] for src in cfg.sources])
    smallest = np.nanargmax(subset[0]["resque_dist"], 0)  # the source RESQUE_dist calls the least shifted
    result["input_shifts"]["least_shifted_family"] = dict(
        zip(result["input_shifts"]["targets"], fams[smallest].tolist())
    )
    trained = fams != "random"  # the same question without the random-weight controls
    result["input_shifts_trained"] = evaluate(*({k: v[trained] for k, v in d.items()} for d in subset), cfg)
    result["censored_fraction"] = {
        s: float(np.mean([r[f"{s}_epochs"] is None for r in runs])) for s in STRATEGIES
    }
    result |= {"fitted_cost_mae_epochs": mae, "runs": runs, "elapsed_s": elapsed}
    result["answers"] = answers(result)
    result["ntk_screening"] = ntk_screening(cfg, runs)
    return result


def select_sources(cfg: Config, wanted: list[str]) -> Config:
    """The configuration with only the named sources (in the configuration's order)."""
    known = [x["name"] for x in cfg.sources]
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise SystemExit(
            f"--sources: expected names of the {cfg.name} configuration's sources, got {unknown or wanted!r}. "
            f"HINT: one or more of {', '.join(map(repr, known))} (quote each name)."
        )
    return replace(cfg, sources=[x for x in cfg.sources if x["name"] in wanted])


def stored_pairs(cfg: Config, path: Path) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Runs per source name from a runs file (``.jsonl``) or a results JSON, and the GPU meter records.

    A results JSON's runs are taken when its settings match ``cfg``'s (any torch: re-analysis only).
    """
    if path.suffix != ".json":
        meter = path.with_name(path.name.replace(".runs.jsonl", ".meter.jsonl"))
        records = [json.loads(x) for x in meter.read_text().splitlines()] if meter.exists() else []
        return checkpoint_runs(cfg, path, same_torch=False), records
    old = json.loads(path.read_text())
    if run_settings(old["config"]) != run_settings(asdict(cfg)):
        raise SystemExit(
            f"--from {path}: its settings {run_settings(old['config'])} are not the {cfg.name} configuration's "
            f"{run_settings(asdict(cfg))}. HINT: pass the --config (or --quick) that made it."
        )
    made = {"torch": old["torch"], "machine": old.get("machine", MACHINE)}
    out = {name: [r | made for r in runs] for name, runs in results_pairs(cfg, old).items()}
    return out, (old.get("energy") or {}).get("invocations") or []


def _rescore_stored(
    cfg: Config, path: Path, drop_incomplete: bool = False
) -> tuple[dict[str, Any], Config, list[dict[str, str]]]:
    """Analyse stored runs alone: a runs file (runs made elsewhere, e.g. a GPU configuration over several
    invocations) or a results JSON (``--from``, e.g. with ``--sources`` to analyse a subset of its sources).

    ``drop_incomplete``: leave out the sources that lack some of their pairs (recorded as skipped, with how
    many pairs they had) instead of stopping. Epochs to target and Wh are recomputed over the sources
    analysed (the goal depends on them). Returns the result, the configuration analysed, the skipped.
    """
    stored, records = stored_pairs(cfg, path)
    skipped = []
    if drop_incomplete:
        nt = len(cfg.targets)
        skipped = [
            {
                "name": x["name"],
                "reason": f"incomplete: {len(stored.get(x['name'], []))} of {nt} pairs were run",
            }
            for x in cfg.sources
            if len(stored.get(x["name"], [])) < nt
        ]
        gone = {x["name"] for x in skipped}
        cfg = replace(cfg, sources=[x for x in cfg.sources if x["name"] not in gone])
    runs = [{**r, "s": s} for s, spec in enumerate(cfg.sources) for r in stored.get(spec["name"], [])]
    have = {(r["s"], r["t"]) for r in runs}
    missing = [
        f"{spec['name']} x {cfg.targets[t]['name']}"
        for s, spec in enumerate(cfg.sources)
        for t in range(len(cfg.targets))
        if (s, t) not in have
    ]
    if missing:
        raise SystemExit(
            f"--rescore of {path}: {len(missing)} of {len(cfg.sources) * len(cfg.targets)} "
            f"pairs are missing (first: {missing[:3]}). HINT: run the configuration again with --reuse to "
            "compute only those."
        )
    runs.sort(key=lambda r: (r["s"], r["t"]))
    fill_epochs(runs, len(cfg.targets), cpu_power_model()["w_per_cpu_s"])
    made_on, torch_version = (", ".join(sorted({r[k] for r in runs})) for k in ("machine", "torch"))
    result = analyse(cfg, runs, float(sum(r["seconds"] for r in runs)), made_on, torch_version)
    if window_key(cfg.device) == GPUWindows.key:
        result["energy"] = gpu_energy_section(runs, records)
    else:
        result["energy"] = energy_section(runs, None)
    result["elapsed_from"] = "the sum of the pairs' own seconds (runs made over several invocations)"
    return result, cfg, skipped


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or, with ``--rescore``, re-analyse the runs of an earlier JSON), write JSON and markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the test configuration (seconds)")
    parser.add_argument(
        "--config",
        choices=sorted(CONFIGS),
        default="cpu",
        help="cpu (the committed CPU run) or gpu224 (the ImageNet sources at 224 px on one CUDA GPU)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output stem (default results/transferability[_gpu224])"
    )
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="re-analyse the runs stored in the output JSON (screening runs that lack the NTK screening); "
        "without a JSON, the runs file written as pairs finish (every pair must be there)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the runs stored in the output JSON and in the runs file that this configuration would compute "
        "identically (same torch, settings, targets and source) and compute only the missing pairs",
    )
    parser.add_argument(
        "--from",
        dest="from_",
        type=Path,
        default=None,
        help="with --rescore: the runs to analyse, a results JSON or a runs file (default: the output's own)",
    )
    parser.add_argument(
        "--sources",
        nargs="+",
        default=None,
        metavar="NAME",
        help="run or analyse only these of the configuration's sources (names as in the results)",
    )
    parser.add_argument(
        "--drop-incomplete",
        action="store_true",
        help="with --rescore of a runs file: leave out the sources that lack some pairs (listed as skipped)",
    )
    parser.add_argument(
        "--runs-only",
        action="store_true",
        help="compute the missing pairs into the runs file and stop (no analysis; --rescore analyses later)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes of one thread each (the CPU configuration took 1414 s with 2 on a 2-core CPU); "
        "GPU configurations run in one process",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    name = "quick" if args.quick else args.config
    default_stem = {"quick": "transferability_quick", "cpu": "transferability"}.get(
        name, f"transferability_{name}"
    )
    stem = args.out or RESULTS / default_stem
    builder = quick_config if args.quick else CONFIGS[args.config]
    if args.sources:
        builder = functools.partial(select_sources, builder(), args.sources)
    if args.rescore and (args.from_ or not stem.with_suffix(".json").exists()):
        result, _, skipped = _rescore_stored(
            builder(), args.from_ or checkpoint_path(stem), args.drop_incomplete
        )
        reused = None
    elif args.rescore:
        old = json.loads(stem.with_suffix(".json").read_text())
        cfg, skipped = Config(**old["config"]), old.get("skipped_sources", [])
        added = add_screening(cfg, old["runs"])  # runs stored before the NTK screening existed
        made_on, torch_version = old.get("machine", MACHINE), old.get("torch", torch.__version__)
        result = analyse(cfg, old["runs"], old["elapsed_s"] + added, made_on, torch_version)
        result["energy"] = old.get("energy")
        reused = old.get("reused")
    else:
        cfg, skipped = available_sources(builder())
        if torch.device(cfg.device).type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(
                f"--config {args.config} runs on a CUDA GPU and torch sees none here. HINT: run it on a machine "
                "with an NVIDIA GPU, or run the CPU configuration (the default)."
            )
        for s in skipped:
            print(f"  skipped source {s['name']}: {s['reason']}", flush=True)
        old = (
            json.loads(stem.with_suffix(".json").read_text())
            if args.reuse and stem.with_suffix(".json").exists()
            else None
        )
        reuse = stored_runs(cfg, old) if old else {}
        if args.reuse:
            for source, extra in checkpoint_runs(cfg, checkpoint_path(stem)).items():
                have = {r["t"] for r in reuse.get(source, [])}
                reuse[source] = sorted(
                    [*reuse.get(source, []), *(r for r in extra if r["t"] not in have)], key=lambda r: r["t"]
                )
        gpu = torch.device(cfg.device).type == "cuda"
        if gpu:
            joules0 = windows_meter(cfg.device).read()
        else:
            cpu_power_model()  # codecarbon's CPU detection, once, before the clock starts
            meter, cpu0 = start_run_meter()
        start = time.perf_counter()
        stem.parent.mkdir(parents=True, exist_ok=True)
        runs = run_grid(cfg, reuse, jobs=args.jobs, checkpoint=checkpoint_path(stem))
        elapsed = time.perf_counter() - start
        if gpu:
            done_before = {(name_, r["t"]) for name_, rs in reuse.items() for r in rs}
            new_runs = [r for r in runs if (r["source"], r["t"]) not in done_before]
            record = gpu_run_record(cfg, joules0, start, new_runs)
            with stem.with_name(stem.name + ".meter.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
        else:
            whole_run = stop_run_meter(meter, cpu0, runs)
        if args.runs_only:
            print(f"wrote {checkpoint_path(stem)} ({len(runs)} pairs; runs took {elapsed:.0f} s)")
            return {"runs": runs, "elapsed_s": elapsed}
        reused = None
        if reuse and old:  # the stored runs' time: the earlier run's, which made them all
            reused = {"sources": list(reuse), "earlier_elapsed_s": old["elapsed_s"], "new_pairs_s": elapsed}
            elapsed += old["elapsed_s"]
        result = analyse(cfg, runs, elapsed, machine(cfg, args.jobs), torch.__version__)
        result["energy"] = gpu_energy_section(runs, [record]) if gpu else energy_section(runs, whole_run)
    result["skipped_sources"] = skipped
    result["reused"] = reused
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))
    table = markdown(result)
    stem.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {stem.with_suffix('.json')} (runs took {result['elapsed_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
