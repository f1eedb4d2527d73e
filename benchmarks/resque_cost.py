"""What does the RESQUE pass cost next to a bare inference pass over the same loaders?

Both passes go over the same two loaders (original and shifted data), alternated, median of repeats:

- ``bare``: ``model(x)`` under ``no_grad`` for every batch;
- ``loop``: the same forwards with the feature hook, ``pool_features`` and ``RESQUEDist.update`` (the
  statistics a user would stream), then ``compute``;
- ``callback``: ``RESQUECheck.run`` (what the callback does at ``on_fit_start``: frozen-model bookkeeping,
  RNG save/restore, the pass, the metric).

Models: ``digits`` (the correlation benchmark's small CNN on 8x8 digits, batch 256) and ``wide`` (four
stride-2 3x3 convs up to 512 channels on 3x224x224 inputs, batch 64: a realistic per-batch cost).

Usage::

    python benchmarks/resque_cost.py --model digits            # CPU, 1 thread
    python benchmarks/resque_cost.py --model wide --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reuse.callbacks.resque_check import RESQUECheck
from lightning_reuse.functional import pool_features
from lightning_reuse.metrics import RESQUEDist
from lightning_reuse.nn.layers import capture_output


class DigitsCNN(nn.Module):
    """conv3x3-ReLU, conv3x3-ReLU-maxpool, linear head on the flattened 4x4 map (keeps spatial detail)."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(width * 16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block2(self.block1(x)).flatten(1))


class WideCNN(nn.Module):
    """Four stride-2 3x3 conv blocks (64-128-256-512 channels), global average pool, linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        chans = [3, 64, 128, 256, 512]
        for i in range(4):
            conv = nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1)
            self.add_module(f"block{i + 1}", nn.Sequential(conv, nn.ReLU()))
        self.head = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(4):
            x = getattr(self, f"block{i + 1}")(x)
        return self.head(x.mean(dim=(2, 3)))


class Wrapped(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def data(model: str, n: int) -> tuple[Tensor, Tensor, str]:
    g = torch.Generator().manual_seed(0)
    if model == "wide":
        return torch.rand(n, 3, 224, 224, generator=g), torch.randint(0, 10, (n,), generator=g), "synthetic"
    try:
        from lightning_reuse.samples.digits import load_digits_tensors

        x, y = load_digits_tensors()
        return x, y, "digits"
    except ImportError:  # scikit-learn missing: same shapes, random values
        return torch.rand(1797, 1, 8, 8, generator=g), torch.randint(0, 10, (1797,), generator=g), "synthetic"


def measure_cost(
    model_name: str = "digits",
    device: str = "cpu",
    repeats: int = 30,
    batch_size: int | None = None,
    n: int = 512,
) -> dict[str, Any]:
    """Medians of ``repeats`` alternated passes; see the module docstring."""
    torch.manual_seed(0)
    net = DigitsCNN() if model_name == "digits" else WideCNN()
    layer = "net.block2.0" if model_name == "digits" else "net.block4.0"
    batch_size = batch_size or (256 if model_name == "digits" else 64)
    model = Wrapped(net).to(device).eval()
    x, y, source = data(model_name, n)
    shifted_x = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    shifted = DataLoader(TensorDataset(shifted_x, y), batch_size=batch_size)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    check = RESQUECheck(shifted, layer=layer, original_dataloader=loader, num_classes=10, progress_bar=False)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def bare() -> None:
        with torch.no_grad():
            for dl in (loader, shifted):
                for xb, _ in dl:
                    model(xb.to(device))
        sync()

    def loop() -> None:
        metric = RESQUEDist(num_classes=10).to(device)
        with torch.no_grad(), capture_output(model, layer) as store:
            for dl, side in ((loader, False), (shifted, True)):
                for xb, yb in dl:
                    xb, yb = xb.to(device), yb.to(device)
                    model(xb)
                    metric.update(pool_features(store["output"]), yb, shifted=side)
        metric.compute()
        sync()

    def callback() -> None:
        check.run(trainer, model)
        sync()

    out: dict[str, Any] = {
        "model": model_name,
        "device": device,
        "data": source,
        "repeats": repeats,
        "batch_size": batch_size,
        "n_samples_per_side": len(x),
    }
    for name, fn in (("loop", loop), ("callback", callback)):
        bare(), fn()  # warm-up
        times: dict[str, list[float]] = {"bare": [], "resque": []}
        for _ in range(repeats):
            for key, f in (("bare", bare), ("resque", fn)):
                t0 = time.perf_counter()
                f()
                times[key].append(time.perf_counter() - t0)
        out[name] = {
            "bare_median_s": statistics.median(times["bare"]),
            "resque_median_s": statistics.median(times["resque"]),
            "ratio_of_medians": statistics.median(times["resque"]) / statistics.median(times["bare"]),
            "ratio_median_paired": statistics.median(r / b for r, b in zip(times["resque"], times["bare"])),
        }
    return out


def markdown_rows(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | device | pass | bare (median s) | RESQUE (median s) | ratio of medians | median paired ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for name in ("loop", "callback"):
            m = r[name]
            lines.append(
                f"| {r['model']} ({r['data']}, batch {r['batch_size']}) | {r['device']} | {name} | "
                f"{m['bare_median_s']:.4f} | {m['resque_median_s']:.4f} | {m['ratio_of_medians']:.3f} | "
                f"{m['ratio_median_paired']:.3f} |"
            )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("digits", "wide"), nargs="+", default=["digits"])
    p.add_argument("--device", nargs="+", default=["cpu"])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hardware", default="unspecified")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "resque_cost"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for device in args.device:
        for model in args.model:
            if model == "wide" and device == "cpu":
                continue  # minutes per pass on one thread; the wide model is for accelerators
            r = measure_cost(model, device, args.repeats)
            print(json.dumps(r), flush=True)
            results.append(r)
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    payload = {"hardware": args.hardware, "threads": args.threads, "results": results}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    md = "\n".join([f"# RESQUE pass cost ({args.hardware})", "", *markdown_rows(results)]) + "\n"
    stem.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
