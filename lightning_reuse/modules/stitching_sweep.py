"""The stitching sweep, an experiment runner: a sender-layer x receiver-layer matrix of stitches, with controls.

It is not a LightningModule: it has its own plain torch training loop (:func:`train_stitch`) because a sweep trains hundreds of tiny
stitches, where a Trainer per stitch would cost more than the training. To train one stitch with Lightning
(callbacks, loggers, DDP, checkpoints) use :class:`lightning_reuse.ModelStitching`.

For every pair of cut points a stitch is trained (sender and receiver frozen, Hernandez et al., arXiv
2303.11277) and scored on held-out data. Beside the stitched accuracy every cell records the controls:

- ``random_sender_acc`` / ``random_receiver_acc``: the same stitch trained with a randomly initialised
  sender (or receiver) of the same architecture; a high value means the stitch alone does the work;
- ``pixel_sender_acc``: the stitch reads the raw input (:class:`PixelSender`): the upper bound of what the
  stitch and the receiver's suffix do without the sender (one per receiver layer);
- ``stitched_minus_<control>`` for each control run, and ``stitched_minus_control``: stitched accuracy
  minus the strongest control of the cell (the number to read: above 0 means the sender's representation
  adds something no control reaches);
- ``mse`` / ``mse_normalized`` / ``cka``: mismatch between the stitch output and the receiver's own
  representation at that layer (a stitch can "hack" the receiver with a different representation);
- ``ls_acc``: the training-free least-squares affine stitch (Csiszarik et al., NeurIPS 2021);
- ``penalty``: stitched loss minus the receiver's own loss.

Results go to ``<out_dir>/<name>.json`` (written after every cell: re-running skips finished cells),
``<name>.csv`` and a heatmap ``<name>.png``; with a W&B logger (or run) they are logged as a table and an
image. The defaults are the paper's configuration (:data:`PAPER`): bare adapters, SGD lr 0.01, momentum 0.9,
weight decay 0.01, linear warm-up then cosine decay, batch 256, 4 epochs. ``adapter="hernandez"`` (BN-wrapped
adapters) and ``optimizer="adam"`` (Bansal et al.) are options. Tensors may live on any device (the stitch
follows the data).

Example:
    >>> import torch
    >>> from lightning_reuse.samples import SmallCNN
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    >>> net = SmallCNN(width=4)
    >>> res = stitching_sweep(net, net, ["block1"], ["block2"], (x, y), (x, y), out_dir="sweep_doc",
    ...                       epochs=1, controls=(), progress=False)
    >>> sorted(res.cells[0])[:4], res.computed
    (['cka', 'ls_acc', 'mse', 'mse_normalized'], [('block1', 'block2')])
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lightning_reuse.functional import linear_cka, representation_mse
from lightning_reuse.modules.stitching import _lr_factor
from lightning_reuse.nn import AffineStitch, StitchedModel

CONTROLS: tuple[str, ...] = ("random_sender", "random_receiver", "pixel_sender")
PAPER: dict[str, Any] = {
    "adapter": "paper",
    "optimizer": "sgd",
    "lr": 1e-2,
    "momentum": 0.9,
    "weight_decay": 1e-2,
    "warmup_fraction": 0.1,
    "batch_size": 256,
    "epochs": 4,
}
"""Hernandez et al.'s stitch training: bare adapters, SGD 0.01 momentum 0.9, warm-up + cosine, wd 0.01,
batch 256, 4 epochs (the warm-up length, 10% of the steps, is ours: the paper does not give it)."""


class PixelSender(nn.Module):
    """A sender that sends its input unchanged, at the layer named ``"input"`` (the pixel-sender control)."""

    def __init__(self) -> None:
        super().__init__()
        self.input = nn.Identity()

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.input(x)


@dataclass
class SweepResult:
    """The cells of a sweep (one dict per sender/receiver pair) and where they were written."""

    sender_layers: list[str]
    receiver_layers: list[str]
    cells: list[dict[str, Any]]
    computed: list[tuple[str, str]] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)

    def matrix(self, metric: str = "stitched_acc") -> np.ndarray:
        """``[len(sender_layers), len(receiver_layers)]`` array of ``metric`` (NaN where missing)."""
        out = np.full((len(self.sender_layers), len(self.receiver_layers)), np.nan)
        for c in self.cells:
            if c["sender_layer"] in self.sender_layers and c["receiver_layer"] in self.receiver_layers:
                value = c.get(metric)
                i, j = (
                    self.sender_layers.index(c["sender_layer"]),
                    self.receiver_layers.index(c["receiver_layer"]),
                )
                out[i, j] = np.nan if value is None else value
        return out


def random_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every parameter re-initialised (``reset_parameters``) under ``seed``."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in clone.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return clone.eval()


def _batches(x: Tensor, y: Tensor, batch_size: int) -> Any:
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]


def train_stitch(
    stitched: StitchedModel,
    x: Tensor,
    y: Tensor,
    epochs: int = PAPER["epochs"],
    lr: float = PAPER["lr"],
    batch_size: int = PAPER["batch_size"],
    seed: int = 0,
    optimizer: Literal["sgd", "adam"] = PAPER["optimizer"],
    momentum: float = PAPER["momentum"],
    weight_decay: float = PAPER["weight_decay"],
    warmup_fraction: float = PAPER["warmup_fraction"],
) -> StitchedModel:
    """Fit only ``stitched.stitch`` (plain torch loop); the defaults are the paper's (:data:`PAPER`).

    ``optimizer="sgd"``: SGD with ``momentum`` and ``weight_decay``; ``"adam"``: Adam with ``weight_decay``.
    The learning rate warms up linearly over ``warmup_fraction`` of the steps, then decays by a cosine to 0.
    The frozen sender's activations are computed once and reused every epoch (same result, less work).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        feats = torch.cat([stitched.sender_features(xb) for xb, _ in _batches(x, y, 512)])
    params = [p for p in stitched.stitch.parameters() if p.requires_grad]
    opt = _optimizer(params, optimizer, lr, momentum, weight_decay)
    total = max(1, epochs * math.ceil(len(x) / batch_size))
    factor = functools.partial(
        _lr_factor, warmup=int(warmup_fraction * total), total=total, schedule="cosine"
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    stitched.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen).to(x.device)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:  # BatchNorm in the stitch needs two samples
                continue
            opt.zero_grad(set_to_none=True)
            logits = stitched.receiver_from(stitched.stitch(feats[idx]), x[idx])
            F.cross_entropy(logits, y[idx]).backward()
            opt.step()
            sched.step()
    return stitched.eval()


def _optimizer(
    params: list[Tensor], optimizer: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"`optimizer` must be 'sgd' or 'adam'; got {optimizer!r}. HINT: 'sgd' is the paper's.")


@torch.no_grad()
def _scores(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> tuple[float, float]:
    logits = torch.cat([model(xb) for xb, _ in _batches(x, y, batch_size)])
    return float((logits.argmax(-1) == y).float().mean()), float(F.cross_entropy(logits, y))


def _fit(
    sender: nn.Module,
    s_layer: str,
    receiver: nn.Module,
    r_layer: str,
    train: tuple[Tensor, Tensor],
    hp: dict[str, Any],
) -> StitchedModel:
    """Build an ``"auto"`` stitch between the two layers and train it (seeded by ``hp["seed"]``)."""
    xt, yt = train
    torch.manual_seed(hp["seed"])
    stitched = StitchedModel(
        sender,
        s_layer,
        receiver,
        r_layer,
        stitch="auto",
        example_input=xt[: min(len(xt), 16)],
        adapter=hp["adapter"],
    )
    stitched.stitch.to(xt.device)
    keys = ("epochs", "lr", "batch_size", "seed", "optimizer", "momentum", "weight_decay", "warmup_fraction")
    return train_stitch(stitched, xt, yt, **{k: hp[k] for k in keys})


@torch.no_grad()
def _representation_scores(
    stitched: StitchedModel, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], hp: dict[str, Any]
) -> dict[str, Any]:
    """Mismatch of the stitch output with the receiver's own representation, and the least-squares stitch."""
    (xt, yt), (xv, yv), bs = train, val, hp["batch_size"]
    out = torch.cat([stitched.stitch_output(xb) for xb, _ in _batches(xv, yv, bs)])
    own = torch.cat([stitched.receiver_features(xb) for xb, _ in _batches(xv, yv, bs)])
    ls = (
        AffineStitch(stitched.sender_shape, stitched.receiver_shape)
        .to(xt.device)
        .fit(
            torch.cat([stitched.sender_features(xb) for xb, _ in _batches(xt, yt, bs)]),
            torch.cat([stitched.receiver_features(xb) for xb, _ in _batches(xt, yt, bs)]),
            ridge=hp["ridge"],
        )
    )
    ls_model = StitchedModel(
        stitched.sender, stitched.sender_layer, stitched.receiver, stitched.receiver_layer, stitch=ls
    )
    return {
        "mse": float(representation_mse(out, own)),
        "mse_normalized": float(representation_mse(out, own, normalized=True)),
        "cka": float(linear_cka(out, own)),
        "ls_acc": _scores(ls_model, xv, yv, bs)[0],
    }


def _cell(
    sender: nn.Module,
    s_layer: str,
    receiver: nn.Module,
    r_layer: str,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    controls: Sequence[str],
    rand: dict[str, nn.Module],
    hp: dict[str, Any],
    pixel: dict[str, float],
) -> dict[str, Any]:
    """One cell of the matrix: the stitched scores, the representation scores, the controls and the margins.

    ``pixel`` caches the pixel-sender control per receiver layer (it does not depend on the sender layer).
    """
    (xv, yv), bs = val, hp["batch_size"]
    stitched = _fit(sender, s_layer, receiver, r_layer, train, hp)
    acc, loss = _scores(stitched, xv, yv, bs)
    _, own_loss = _scores(receiver, xv, yv, bs)
    representation = _representation_scores(stitched, train, val, hp)
    cell = {
        "sender_layer": s_layer,
        "receiver_layer": r_layer,
        "stitch": type(stitched.stitch).__name__,
        "stitched_acc": acc,
        "stitched_loss": loss,
        "penalty": loss - own_loss,
        **{k: representation[k] for k in ("mse", "mse_normalized", "cka", "ls_acc")},
        **{f"{c}_acc": None for c in CONTROLS},
    }
    if "random_sender" in controls:
        fitted = _fit(rand["sender"], s_layer, receiver, r_layer, train, hp)
        cell["random_sender_acc"] = _scores(fitted, xv, yv, bs)[0]
    if "random_receiver" in controls:
        fitted = _fit(sender, s_layer, rand["receiver"], r_layer, train, hp)
        cell["random_receiver_acc"] = _scores(fitted, xv, yv, bs)[0]
    if "pixel_sender" in controls:
        if r_layer not in pixel:
            fitted = _fit(PixelSender(), "input", receiver, r_layer, train, hp)
            pixel[r_layer] = _scores(fitted, xv, yv, bs)[0]
        cell["pixel_sender_acc"] = pixel[r_layer]
    return {**cell, **control_margins(cell)}


def control_margins(cell: dict[str, Any]) -> dict[str, float | None]:
    """``stitched_minus_<control>`` for each control in ``cell``, and ``stitched_minus_control`` (the strongest).

    >>> control_margins({"stitched_acc": 0.9, "random_sender_acc": 0.5, "pixel_sender_acc": 0.7})
    {'stitched_minus_random_sender': 0.4, 'stitched_minus_random_receiver': None, \
'stitched_minus_pixel_sender': 0.2, 'stitched_minus_control': 0.2}
    """
    out: dict[str, float | None] = {}
    for c in CONTROLS:
        value = cell.get(f"{c}_acc")
        out[f"stitched_minus_{c}"] = None if value is None else round(cell["stitched_acc"] - value, 6)
    present = [cell[f"{c}_acc"] for c in CONTROLS if cell.get(f"{c}_acc") is not None]
    out["stitched_minus_control"] = round(cell["stitched_acc"] - max(present), 6) if present else None
    return out


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)  # atomic: an interrupted sweep leaves the last complete file


def stitching_sweep(
    sender: nn.Module,
    receiver: nn.Module,
    sender_layers: Sequence[str],
    receiver_layers: Sequence[str],
    train_data: tuple[Tensor, Tensor],
    val_data: tuple[Tensor, Tensor],
    out_dir: str | os.PathLike,
    name: str = "stitching",
    epochs: int = PAPER["epochs"],
    lr: float = PAPER["lr"],
    batch_size: int = PAPER["batch_size"],
    ridge: float = 1e-3,
    adapter: Literal["paper", "hernandez", "pooled"] = PAPER["adapter"],
    controls: Sequence[str] = CONTROLS,
    seed: int = 0,
    logger: Any = None,
    progress: bool = True,
    optimizer: Literal["sgd", "adam"] = PAPER["optimizer"],
    momentum: float = PAPER["momentum"],
    weight_decay: float = PAPER["weight_decay"],
    warmup_fraction: float = PAPER["warmup_fraction"],
) -> SweepResult:
    """Train and score a stitch for every ``(sender_layer, receiver_layer)`` pair, with controls.

    Args:
        sender, receiver: trained models (frozen here; eval mode). May be the same model.
        sender_layers, receiver_layers: cut points (names from ``stitchable_points``; block outputs).
        train_data, val_data: ``(x, y)`` to fit the stitches and to score them (on the models' device).
        out_dir, name: results go to ``out_dir/name.{json,csv,png}``. An existing JSON with the same
            settings is resumed (finished cells are kept, not recomputed).
        epochs, lr, batch_size, seed, optimizer, momentum, weight_decay, warmup_fraction: stitch training
            (see :func:`train_stitch`); the defaults are the paper's (:data:`PAPER`).
        ridge: L2 penalty of the least-squares baseline (stabilises rank-deficient activations).
        adapter: stitch family for differing shapes: ``"paper"`` (bare, the default), ``"hernandez"``
            (BN-wrapped) or ``"pooled"`` (see ``make_stitch``).
        controls: subset of ``("random_sender", "random_receiver", "pixel_sender")``.
        logger: a Lightning ``WandbLogger`` or a ``wandb`` run: the table and heatmap are logged to it.
        progress: show a progress bar over cells.

    Returns:
        A :class:`SweepResult`; ``result.matrix("stitched_acc")`` is the heatmap's matrix, and
        ``result.matrix("stitched_minus_control")`` the margin over the strongest control.
    """
    unknown = set(controls) - set(CONTROLS)
    if unknown:
        raise ValueError(
            f"`controls` must be a subset of {CONTROLS}; got unknown {sorted(unknown)}. HINT: drop them."
        )
    sender_layers, receiver_layers = list(sender_layers), list(receiver_layers)
    hp = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "ridge": ridge,
        "seed": seed,
        "controls": sorted(controls),
        "adapter": adapter,
        "optimizer": optimizer,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "warmup_fraction": warmup_fraction,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    cells = _resume(json_path, hp)
    for half in (sender, receiver):
        half.eval()
    rand = {"sender": random_like(sender, seed + 1), "receiver": random_like(receiver, seed + 2)}
    todo = [(s, r) for s in sender_layers for r in receiver_layers if f"{s}|{r}" not in cells]
    pixel = {c["receiver_layer"]: c["pixel_sender_acc"] for c in cells.values() if c.get("pixel_sender_acc")}
    from tqdm.auto import tqdm

    computed = []
    for s, r in tqdm(todo, desc=f"stitching sweep {name}", disable=not progress):
        cells[f"{s}|{r}"] = _cell(sender, s, receiver, r, train_data, val_data, controls, rand, hp, pixel)
        computed.append((s, r))
        _write_json(json_path, {"settings": hp, "cells": list(cells.values())})
    wanted = [cells[f"{s}|{r}"] for s in sender_layers for r in receiver_layers]
    if not json_path.exists():
        _write_json(json_path, {"settings": hp, "cells": list(cells.values())})
    result = SweepResult(sender_layers, receiver_layers, wanted, computed, {"json": json_path})
    result.paths["csv"] = _write_csv(out / f"{name}.csv", wanted)
    result.paths["png"] = plot_sweep(result, out / f"{name}.png")
    if logger is not None:
        _log_wandb(logger, name, wanted, result.paths["png"])
    return result


def _resume(json_path: Path, hp: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The finished cells of an earlier run with the same settings, keyed ``"sender_layer|receiver_layer"``."""
    if not json_path.exists():
        return {}
    saved = json.loads(json_path.read_text())
    if saved.get("settings") != hp:
        raise ValueError(
            f"{json_path} was written with settings {saved.get('settings')}, not {hp}; resuming would mix "
            "them. HINT: pass another `name`/`out_dir`, or delete the file to start over."
        )
    return {f"{c['sender_layer']}|{c['receiver_layer']}": c for c in saved["cells"]}


def _write_csv(path: Path, cells: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(cells[0]) if cells else ["sender_layer"])
        writer.writeheader()
        writer.writerows(cells)
    return path


def plot_sweep(result: SweepResult, path: str | os.PathLike, title: str | None = None) -> Path:
    """Heatmaps of stitched accuracy, the margin over the strongest control, and CKA (rows: sender layers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("stitched_acc", "stitched accuracy"),
        ("stitched_minus_control", "stitched minus strongest control"),
        ("cka", "linear CKA"),
    ]
    fig, axes = plt.subplots(
        1, 3, figsize=(4 + 1.2 * len(result.receiver_layers) * 3, 1.5 + 0.45 * len(result.sender_layers))
    )
    im = None
    for ax, (metric, label) in zip(axes, panels):
        margin = metric.startswith("stitched_minus")
        cmap, lo = ("RdBu", -1) if margin else ("viridis", 0)
        img = ax.imshow(result.matrix(metric), vmin=lo, vmax=1, cmap=cmap, origin="upper")
        im = im if margin else img
        ax.set_title(label)
        ax.set_xticks(range(len(result.receiver_layers)), result.receiver_layers, rotation=45, ha="right")
        ax.set_yticks(range(len(result.sender_layers)), result.sender_layers)
        ax.set_xlabel("receiver layer")
        for (i, j), v in np.ndenumerate(result.matrix(metric)):
            if not np.isnan(v):
                dark = abs(v) > 0.6 if margin else v < 0.6
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if dark else "k")
    axes[0].set_ylabel("sender layer")
    fig.colorbar(im, ax=axes, shrink=0.8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _log_wandb(logger: Any, name: str, cells: list[dict[str, Any]], png: Path) -> None:
    import wandb

    run = getattr(logger, "experiment", logger)
    columns = list(cells[0]) if cells else []
    table = wandb.Table(columns=columns, data=[[c[k] for k in columns] for c in cells])
    run.log({f"{name}/table": table, f"{name}/heatmap": wandb.Image(str(png))})
