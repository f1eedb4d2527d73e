"""Does RESQUE predict the cost of retraining? Evidence on scikit-learn digits (Sangarya and Kim, AAAI 2025).

Protocol (the paper's, scaled to digits): a stratified 20% test split; the rest is split 50/30/20 into
A (pre-training only), B (retraining only) and C (shared). A small CNN (two 3x3 convs, max-pool, linear
head on the flattened map) is pre-trained on clean A+C.

- Distribution shift: for Gaussian noise, blur and salt-and-pepper at several levels, RESQUE_dist compares
  the model's features (hook on the last conv, ``net.block2.0``) of clean A+C with those of shifted B+C
  (computed by the ``RESQUECheck`` callback at the start of the fit). The model is then fine-tuned with
  Lightning (Adam) on shifted B+C until it reaches the target accuracy on the shifted retraining data
  (eval mode, end of each epoch); we record epochs to target, summed gradient norms, parameter change,
  wall time, the final accuracy on the shifted test split, and energy/CO2 from ``EnergyMonitor``
  (codecarbon, offline). Pearson and Spearman correlations with 95% bootstrap intervals (resampling
  runs), per shift type and pooled.

  Deviation from the paper, on purpose: the paper's target is a test accuracy. On 8x8 digits, noise and
  salt-and-pepper destroy information, so the reachable test accuracy falls with the level (a GAP SmallCNN
  plateaus at 0.75 test accuracy at noise 0.3) and no single test target is reachable at every level while
  being above the starting accuracy at most levels. "Fit the shifted data to 99%" is reachable at every
  level and is graded; the final test accuracy is reported next to it.
- Task change: pre-train on digits 0-4; new tasks: same classes, 5-9, parity, >=5, rotation classes,
  random labels; RESQUE_task on the new task's training data, then fine-tune (new head) to the target.
- Cost: the RESQUE pass (hook + pooling + streaming statistics) against a bare inference pass over the same
  loader, alternated, median of repeats.

Usage::

    python benchmarks/resque_correlation.py            # reduced grid (a few minutes on 2 CPU cores)
    python benchmarks/resque_correlation.py --full     # full grid (more levels, 3 seeds)

Writes ``benchmarks/results/resque_correlation{,_full}.json`` and ``.md`` and prints the markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

from lightning_reuse.callbacks.resque_check import RESQUECheck
from lightning_reuse.energy.ledger import RetrainingLedger
from lightning_reuse.functional import pool_features, resque_task
from lightning_reuse.metrics import RESQUEDist
from lightning_reuse.nn.layers import capture_output
from lightning_reuse.samples.digits import apply_shift, digits_loader, load_digits_tensors
from lightning_reuse.samples.models import accuracy, train_classifier

RESULTS = Path(__file__).resolve().parent / "results"
LAYER = "net.block2.0"  # the last conv
REDUCED_LEVELS = {
    "noise": [0.0, 0.1, 0.15, 0.2, 0.25, 0.3],
    "blur": [0.0, 0.5, 0.6, 0.75, 0.9, 1.0],
    "salt_pepper": [0.0, 0.025, 0.05, 0.1, 0.15, 0.2],
}
FULL_LEVELS = {
    "noise": [0.0, 0.05, 0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.275, 0.3],
    "blur": [0.0, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0],
    "salt_pepper": [0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2],
}
TASKS = ("same", "5-9", "parity", ">=5", "rotation", "random")


# ------------------------------------------------------------------ data
def stratified_split(y: Tensor, fractions: tuple[float, ...], seed: int) -> list[Tensor]:
    """Per-class shuffle and cut, so every part keeps the class balance (the last part takes the rest)."""
    g = torch.Generator().manual_seed(seed)
    parts: list[list[Tensor]] = [[] for _ in fractions]
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        start = 0
        for i, f in enumerate(fractions):
            stop = len(idx) if i == len(fractions) - 1 else start + round(f * len(idx))
            parts[i].append(idx[start:stop])
            start = stop
    return [torch.cat(p) for p in parts]


def make_task(name: str, x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """The new task's samples and labels from the digits ``(x, y)``."""
    if name == "same":
        keep = y < 5
        return x[keep], y[keep]
    if name == "5-9":
        keep = y >= 5
        return x[keep], y[keep] - 5
    if name == "parity":
        return x, y % 2
    if name == ">=5":
        return x, (y >= 5).long()
    if name == "rotation":
        k = torch.arange(len(x)) % 4
        return torch.stack([torch.rot90(img, int(r), dims=(-2, -1)) for img, r in zip(x, k)]), k
    if name == "random":
        return x, torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(seed))
    raise ValueError(f"unknown task {name!r}; expected one of {TASKS}")


class DigitsCNN(nn.Module):
    """conv3x3-ReLU, conv3x3-ReLU-maxpool, linear head on the flattened 4x4 map (keeps spatial detail)."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(width * 16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block2(self.block1(x)).flatten(1))


# ------------------------------------------------------------------ Lightning glue
class FineTuner(pl.LightningModule):
    def __init__(self, net: nn.Module, lr: float) -> None:
        super().__init__()
        self.net, self.lr = net, lr
        self.grad_norm_sum = 0.0

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, _: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        grads = [p.grad.detach().flatten() for p in self.parameters() if p.grad is not None]
        self.grad_norm_sum += float(torch.cat(grads).norm())

    def validation_step(self, batch: Any, _: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(-1) == y).float().mean(), on_epoch=True, reduce_fx="mean")

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class StopAtTarget(pl.Callback):
    """Stop once ``val_acc`` (accuracy on the whole retraining set, eval mode) reaches the target."""

    def __init__(self, target: float) -> None:
        self.target, self.epochs = target, None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.epochs is not None:
            return
        if float(trainer.callback_metrics["val_acc"]) >= self.target:
            self.epochs = trainer.current_epoch + 1
            trainer.should_stop = True


def make_energy_monitor(kind: str, country: str) -> pl.Callback | None:
    if kind == "none":
        return None
    from lightning_reuse.callbacks.energy_monitor import EnergyMonitor

    if kind == "simulated":
        return EnergyMonitor(backend="simulated", predict=False)
    return EnergyMonitor(
        backend="codecarbon", country_iso_code=country, measure_power_secs=1.0, predict=False
    )


def finetune(
    net: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    args: argparse.Namespace,
    seed: int,
    check: RESQUECheck | None = None,
    target: float | None = None,
) -> dict[str, Any]:
    pl.seed_everything(seed, verbose=False)
    module = FineTuner(net, args.lr)
    start = [p.detach().clone() for p in module.parameters()]
    stop = StopAtTarget(args.target if target is None else target)
    monitor = make_energy_monitor(args.energy, args.country)
    callbacks = [c for c in (monitor, check, stop) if c is not None]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=args.max_epochs,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    t0 = time.perf_counter()
    trainer.fit(
        module,
        digits_loader(*train, batch_size=args.batch_size, shuffle=True, seed=seed),
        digits_loader(*train, batch_size=len(train[0])),
    )
    wall = time.perf_counter() - t0
    change = float(torch.cat([(p.detach() - s).flatten() for p, s in zip(module.parameters(), start)]).norm())
    row: dict[str, Any] = {
        "epochs_to_target": stop.epochs if stop.epochs is not None else args.max_epochs,
        "reached": stop.epochs is not None,
        "grad_norm_sum": module.grad_norm_sum,
        "param_change": change,
        "wall_s": wall,
        "test_acc_after": accuracy(module.net, *test),
    }
    if monitor is not None:
        total = monitor.total
        row.update(energy_wh=total.energy_wh, co2_g=total.co2_g, energy_method=dict(total.method))
        if check is not None and "resque-precheck" in monitor.windows:
            row["resque_wh"] = monitor.windows["resque-precheck"].energy_wh
    if check is not None and check.result is not None:
        row["resque_s"] = check.result.duration_s
    return row


# ------------------------------------------------------------------ experiments
def pretrain(x: Tensor, y: Tensor, num_classes: int, args: argparse.Namespace, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = DigitsCNN(num_classes=num_classes, width=args.width)
    return train_classifier(net, x, y, epochs=args.pretrain_epochs, lr=3e-3, seed=seed)


def wrap(net: nn.Module) -> nn.Module:
    holder = nn.Module()
    holder.net = net
    holder.forward = net.forward  # type: ignore[method-assign]
    return holder


def run_dist(
    args: argparse.Namespace, x: Tensor, y: Tensor, levels: dict[str, list[float]]
) -> tuple[list, dict]:
    test_idx, rest_idx = stratified_split(y, (0.2, 0.8), seed=0)
    a, b, c = (rest_idx[p] for p in stratified_split(y[rest_idx], (0.5, 0.3, 0.2), seed=1))
    orig = torch.cat([a, c])
    source = pretrain(x[orig], y[orig], 10, args, seed=0)
    info = {"clean_test_acc": accuracy(source, x[test_idx], y[test_idx]), "sizes": [len(a), len(b), len(c)]}
    rows = []
    retrain = torch.cat([b, c])
    finetune(
        copy.deepcopy(source), (x[retrain], y[retrain]), (x[test_idx], y[test_idx]), args, seed=0
    )  # warm-up
    for kind, lvls in levels.items():
        for level in lvls:
            for seed in range(args.seeds):
                xs = apply_shift(x[retrain], kind, level, seed=100 + seed)
                xt = apply_shift(x[test_idx], kind, level, seed=200 + seed)
                net = copy.deepcopy(source)
                check = RESQUECheck(
                    digits_loader(xs, y[retrain], batch_size=256),
                    layer=LAYER,
                    original_dataloader=digits_loader(x[orig], y[orig], batch_size=256),
                    num_classes=10,
                    progress_bar=False,
                )
                row = finetune(net, (xs, y[retrain]), (xt, y[test_idx]), args, seed=seed, check=check)
                row.update(shift=kind, level=level, seed=seed, resque=check.result.score)
                row["acc_before"] = accuracy(source, xt, y[test_idx])
                rows.append(row)
                print(
                    f"  {kind:11s} level={level:<5} seed={seed} RESQUE={row['resque']:.4f} "
                    f"epochs={row['epochs_to_target']} test acc {row['acc_before']:.3f}->{row['test_acc_after']:.3f} "
                    f"wall={row['wall_s']:.1f}s",
                    flush=True,
                )
    return rows, info


def features(net: nn.Module, x: Tensor, pooling: str = "default") -> Tensor:
    model = wrap(net).eval()
    with torch.no_grad(), capture_output(model, LAYER) as store:
        model(x)
    return pool_features(store["output"], pooling)  # type: ignore[arg-type]


def run_task(args: argparse.Namespace, x: Tensor, y: Tensor) -> tuple[list, dict]:
    test_idx, rest_idx = stratified_split(y, (0.2, 0.8), seed=0)
    a, b, c = (rest_idx[p] for p in stratified_split(y[rest_idx], (0.5, 0.3, 0.2), seed=1))
    orig = torch.cat([a, c])
    orig = orig[y[orig] < 5]
    source = pretrain(x[orig], y[orig], 5, args, seed=0)
    retrain = torch.cat([b, c])
    rows = []
    for task in TASKS:
        for seed in range(args.seeds):
            xtr, ytr = make_task(task, x[retrain], y[retrain], seed=10 + seed)
            xte, yte = make_task(task, x[test_idx], y[test_idx], seed=20 + seed)
            score = float(resque_task(features(source, xtr), ytr))
            score_flat = float(resque_task(features(source, xtr, "flatten"), ytr))
            net = copy.deepcopy(source)
            torch.manual_seed(seed)
            net.head = nn.Linear(net.head.in_features, int(ytr.max()) + 1)
            row = finetune(net, (xtr, ytr), (xte, yte), args, seed=seed, target=args.task_target)
            row.update(task=task, seed=seed, resque=score, resque_flatten=score_flat)
            rows.append(row)
            print(
                f"  task={task:8s} seed={seed} RESQUE_task={score:.4f} (flatten {score_flat:.4f}) "
                f"epochs={row['epochs_to_target']} "
                f"reached={row['reached']}",
                flush=True,
            )
    return rows, {"source_classes": [0, 1, 2, 3, 4]}


def measure_cost(args: argparse.Namespace, x: Tensor, y: Tensor) -> dict[str, Any]:
    """The RESQUE pass against a bare inference pass over the same loaders, alternated; medians of repeats.

    ``loop``: hook + ``pool_features`` + ``RESQUEDist.update`` in a plain loop; ``callback``: the full
    ``RESQUECheck.run`` (frozen-model bookkeeping, RNG save/restore, metric compute) over the original and
    the shifted loader, against bare forwards over both.
    """
    torch.manual_seed(0)
    model = wrap(DigitsCNN(num_classes=10, width=args.width)).eval()
    loader = digits_loader(x, y, batch_size=args.cost_batch_size)
    shifted = digits_loader(apply_shift(x, "noise", 0.2, seed=0), y, batch_size=args.cost_batch_size)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    check = RESQUECheck(shifted, layer=LAYER, original_dataloader=loader, num_classes=10, progress_bar=False)

    def bare(loaders: tuple = (loader,)) -> None:
        with torch.no_grad():
            for dl in loaders:
                for xb, _ in dl:
                    model(xb)

    def loop() -> None:
        metric = RESQUEDist(num_classes=10)
        with torch.no_grad(), capture_output(model, LAYER) as store:
            for dl, side in ((loader, False), (shifted, True)):
                for xb, yb in dl:
                    model(xb)
                    metric.update(pool_features(store["output"]), yb, shifted=side)
        metric.compute()

    pairs = {
        "loop": (lambda: bare((loader, shifted)), loop),
        "callback": (lambda: bare((loader, shifted)), lambda: check.run(trainer, model)),
    }
    out: dict[str, Any] = {
        "repeats": args.cost_repeats,
        "batch_size": args.cost_batch_size,
        "n_samples": len(x),
    }
    for name, (fn_bare, fn_resque) in pairs.items():
        fn_bare(), fn_resque()  # warm-up
        times: dict[str, list[float]] = {"bare": [], "resque": []}
        for _ in range(args.cost_repeats):
            for key, fn in (("bare", fn_bare), ("resque", fn_resque)):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        out[name] = {
            "bare_median_s": statistics.median(times["bare"]),
            "resque_median_s": statistics.median(times["resque"]),
            "ratio_of_medians": statistics.median(times["resque"]) / statistics.median(times["bare"]),
            "ratio_median_paired": statistics.median(r / b for r, b in zip(times["resque"], times["bare"])),
        }
    return out


# ------------------------------------------------------------------ statistics
def correlate(xs: list[float], ys: list[float], n_boot: int, seed: int = 0) -> dict[str, Any]:
    x, yv = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    out: dict[str, Any] = {"n": len(x)}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(yv) == 0:
        return {**out, "pearson": None, "spearman": None}
    out["pearson"] = float(stats.pearsonr(x, yv)[0])
    out["spearman"] = float(stats.spearmanr(x, yv)[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), (n_boot, len(x)))  # resample runs with replacement
    xb, yb = x[idx], yv[idx]
    ok = (np.ptp(xb, axis=1) > 0) & (np.ptp(yb, axis=1) > 0)
    xb, yb = xb[ok], yb[ok]
    for name, (u, v) in {
        "pearson": (xb, yb),
        "spearman": (stats.rankdata(xb, axis=1), stats.rankdata(yb, axis=1)),  # average ranks for ties
    }.items():
        u = u - u.mean(1, keepdims=True)
        v = v - v.mean(1, keepdims=True)
        r = (u * v).sum(1) / np.sqrt((u * u).sum(1) * (v * v).sum(1))
        out[f"{name}_ci95"] = (
            [float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5))] if len(r) else None
        )
    return out


COST_KEYS = ("epochs_to_target", "grad_norm_sum", "param_change", "wall_s", "energy_wh", "co2_g")


def ledger_check(rows: list[dict], group_key: str, level: float = 0.9) -> dict[str, dict[str, Any]]:
    """Leave-one-out test of :class:`RetrainingLedger`: predict each run from the other runs of its group.

    Reports how often the ``level`` prediction interval holds the measured value and the median absolute
    relative error of the point estimate, for epochs to target and energy.
    """
    out: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r[group_key]), []).append(r)
    for name, grp in groups.items():
        for (quantity, key), scale in itertools.product(
            (("epochs_to_target", "epochs_to_target"), ("energy_wh", "energy_wh")), ("linear", "log")
        ):
            if key not in grp[0] or len(grp) < 5:
                continue
            hits, errors = 0, []
            for i, held in enumerate(grp):
                ledger = RetrainingLedger(":memory:", scale=scale)
                for j, r in enumerate(grp):
                    if j != i:
                        ledger.add_run(r["resque"], **{quantity: r[key]})
                est = ledger.predict(held["resque"], quantity, level=level)
                hits += est.lower <= held[key] <= est.upper
                errors.append(abs(est.value - held[key]) / held[key])
            out.setdefault(name, {})[f"{quantity} ({scale})"] = {
                "n": len(grp),
                "coverage": hits / len(grp),
                "median_abs_rel_error": float(np.median(errors)),
                "level": level,
            }
    return out


def summarize(rows: list[dict], group_key: str, n_boot: int) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r[group_key]), []).append(r)
    if group_key != "task":
        groups["pooled"] = rows
    summary = {}
    for name, grp in groups.items():
        summary[name] = {
            k: correlate([r["resque"] for r in grp], [r[k] for r in grp], n_boot)
            for k in COST_KEYS
            if k in grp[0]
        }
    return summary


def fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def fmt4(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# RESQUE vs retraining cost on digits ({result['grid']} grid)",
        "",
        f"Hardware: {result['hardware']}.",
        "",
    ]
    lines += [f"Settings: {json.dumps(result['settings'])}", ""]
    lines += ["## Distribution shift: correlation of RESQUE_dist with the retraining cost", ""]
    lines += ["| shift | n | cost | Pearson [95% CI] | Spearman [95% CI] |", "|---|---|---|---|---|"]
    for shift, per in result["dist_summary"].items():
        for k, c in per.items():
            pci, sci = c.get("pearson_ci95") or [None, None], c.get("spearman_ci95") or [None, None]
            lines.append(
                f"| {shift} | {c['n']} | {k} | {fmt(c['pearson'])} [{fmt(pci[0])}, {fmt(pci[1])}] | "
                f"{fmt(c['spearman'])} [{fmt(sci[0])}, {fmt(sci[1])}] |"
            )
    lines += [
        "",
        "| shift | level | seed | RESQUE_dist | epochs | reached | grad-norm sum | param change | wall s | Wh "
        "| test acc before -> after |",
    ]
    lines += ["|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["dist_rows"]:
        lines.append(
            f"| {r['shift']} | {r['level']} | {r['seed']} | {r['resque']:.4f} | {r['epochs_to_target']} | "
            f"{r['reached']} | {r['grad_norm_sum']:.1f} | {r['param_change']:.3f} | {r['wall_s']:.1f} | "
            f"{fmt4(r.get('energy_wh'))} | {r['acc_before']:.3f} -> {r['test_acc_after']:.3f} |"
        )
    lines += ["", "## Ledger: leave-one-out cost predictions from the other runs of the same shift type", ""]
    lines += [
        "| shift | quantity | n | 90% interval coverage | median abs. relative error |",
        "|---|---|---|---|---|",
    ]
    for shift, per in result["ledger_loo"].items():
        for q, v in per.items():
            lines.append(
                f"| {shift} | {q} | {v['n']} | {v['coverage']:.2f} | {v['median_abs_rel_error']:.2f} |"
            )
    rows = result["dist_rows"]
    share = [r["resque_s"] / r["wall_s"] for r in rows if r.get("resque_s") and r.get("wall_s")]
    if share:
        lines += [
            "",
            f"The RESQUE pre-check (inside each fit, original + shifted data) took a median {np.median(share):.1%} "
            f"of the fit's wall time (range {min(share):.1%} to {max(share):.1%}; median "
            f"{np.median([r['resque_s'] for r in rows]) * 1e3:.0f} ms).",
        ]
    windows = [r["resque_wh"] for r in rows if "resque_wh" in r]
    if windows:
        lines.append(
            f"Its EnergyMonitor window read 0 Wh in {sum(w == 0 for w in windows)} of {len(windows)} runs: the "
            "pass is shorter than codecarbon's sampling interval (1 s here), so its energy is below resolution."
        )
    lines += ["", "## Task change: RESQUE_task", ""]
    lines += ["| task | seed | RESQUE_task (pooled) | RESQUE_task (flatten) | epochs | reached | wall s |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in result["task_rows"]:
        lines.append(
            f"| {r['task']} | {r['seed']} | {r['resque']:.4f} | {r['resque_flatten']:.4f} | "
            f"{r['epochs_to_target']} | {r['reached']} | {r['wall_s']:.1f} |"
        )
    lines += ["", "Runs that did not reach the target count as `max_epochs` (censored).", ""]
    for variant, corr in result["task_correlation"].items():
        t = corr["epochs_to_target"]
        ci = t.get("spearman_ci95") or [None, None]
        lines.append(
            f"- RESQUE_task ({variant} features) vs epochs, all tasks: Spearman {fmt(t['spearman'])} "
            f"[{fmt(ci[0])}, {fmt(ci[1])}], Pearson {fmt(t['pearson'])} (n={t['n']})."
        )
    lines.append("")
    c = result["cost"]
    lines += [
        "## Cost of the RESQUE pass",
        "",
        f"Same loaders, alternated, median of {c['repeats']} repeats, batch size {c['batch_size']}.",
        "",
        "| what | bare inference (median s) | RESQUE pass (median s) | ratio of medians | median paired ratio |",
        "|---|---|---|---|---|",
    ]
    for name in ("loop", "callback"):
        m = c[name]
        lines.append(
            f"| {name} | {m['bare_median_s']:.4f} | {m['resque_median_s']:.4f} | {m['ratio_of_medians']:.3f} | "
            f"{m['ratio_median_paired']:.3f} |"
        )
    lines += [
        "",
        f"Energy method (codecarbon): {result['dist_rows'][0].get('energy_method', 'not measured')}.",
        f"Total benchmark wall time: {result['total_wall_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="full grid: 11 levels per shift, 3 seeds")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--target", type=float, default=0.99, help="accuracy to reach on the retraining data")
    p.add_argument("--task-target", type=float, default=0.95, help="the same, for the new tasks")
    p.add_argument("--max-epochs", type=int, default=80)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--energy", choices=("codecarbon", "simulated", "none"), default="codecarbon")
    p.add_argument("--country", default="USA")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--cost-repeats", type=int, default=30)
    p.add_argument("--cost-batch-size", type=int, default=256)
    p.add_argument("--skip-task", action="store_true")
    p.add_argument("--hardware", default=f"{os.cpu_count()}-core CPU ({platform.machine()}), 1 thread")
    p.add_argument(
        "--out", default=None, help="output stem (default benchmarks/results/resque_correlation[_full])"
    )
    args = p.parse_args()
    args.seeds = args.seeds or (3 if args.full else 1)
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    x, y = load_digits_tensors()
    levels = FULL_LEVELS if args.full else REDUCED_LEVELS
    print("Cost of the RESQUE pass vs bare inference ...", flush=True)
    cost = measure_cost(args, x, y)
    print(json.dumps(cost), flush=True)
    print("Distribution shift ...", flush=True)
    dist_rows, dist_info = run_dist(args, x, y, levels)
    task_rows: list[dict] = []
    if not args.skip_task:
        print("Task change ...", flush=True)
        task_rows, _ = run_task(args, x, y)
    result = {
        "grid": "full" if args.full else "reduced",
        "hardware": args.hardware,
        "settings": {k: v for k, v in vars(args).items() if k not in ("hardware", "out")},
        "dist_info": dist_info,
        "dist_rows": dist_rows,
        "dist_summary": summarize(dist_rows, "shift", args.n_boot),
        "ledger_loo": ledger_check(dist_rows, "shift"),
        "task_rows": task_rows,
        "task_correlation": {
            variant: {
                k: correlate([r[key] for r in task_rows], [r[k] for r in task_rows], args.n_boot)
                for k in COST_KEYS
                if k in task_rows[0]
            }
            for variant, key in (("pooled", "resque"), ("flatten", "resque_flatten"))
        }
        if task_rows
        else {},
        "cost": cost,
        "total_wall_s": time.perf_counter() - t0,
    }
    stem = (
        Path(args.out)
        if args.out
        else RESULTS / ("resque_correlation_full" if args.full else "resque_correlation")
    )
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    stem.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
