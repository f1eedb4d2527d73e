"""Reprogram the ImageNet EfficientNet-Lite0 for 8x8 digits: label mappings (RLM / FLM / ILM / linear) x prompts.

The source stays frozen; only the prompt (and the linear mapping) train, with ILM-VP's recipe (Adam lr 0.01,
MultiStepLR at 50% / 72%, gamma 0.1). Digits are resized to ``--placed`` px and padded into ``--size`` px
(3 channels, EfficientNet-Lite normalisation). Reports test accuracy before training (the mapping alone,
computed under the initial prompt) and after, trainable parameters and seconds per epoch.

Run (CPU, 1 thread, a few minutes)::

    nice -n 5 python benchmarks/reprogramming_digits.py --epochs 4 --n-train 512

Writes ``benchmarks/results/reprogramming_digits.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_reuse import ModelReprogramming
from lightning_reuse.nn import (
    FrequencyLabelMapping,
    FullPrompt,
    InputTransform,
    IterativeLabelMapping,
    LabelMapping,
    LinearLabelMapping,
    PaddingPrompt,
    RandomLabelMapping,
    module_fingerprint,
)
from lightning_reuse.samples import (
    accuracy,
    digits_loader,
    load_digits_tensors,
    load_efficientnet_lite0,
    split_indices,
)

CONFIGS = [
    ("padding", "rlm"),
    ("padding", "flm"),
    ("padding", "ilm"),
    ("padding", "linear"),
    ("full", "ilm"),
]


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._t0 = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.times.append(time.perf_counter() - self._t0)


def make_parts(
    prompt: str, mapping: str, size: int, placed: int, seed: int
) -> tuple[InputTransform, LabelMapping]:
    source, norm = load_efficientnet_lite0(image_size=size)
    del source
    if prompt == "padding":
        transform: InputTransform = PaddingPrompt(
            (1, 8, 8), (3, size, size), resize=placed, mean=norm.mean, std=norm.std
        )
    else:
        transform = FullPrompt(
            (1, 8, 8), (3, size, size), resize=placed, mean=norm.mean, std=norm.std, activation="tanh"
        )
    maps: dict[str, LabelMapping] = {
        "rlm": RandomLabelMapping(1000, 10, seed=seed),
        "flm": FrequencyLabelMapping(1000, 10),
        "ilm": IterativeLabelMapping(1000, 10, remap_every=1),
        "linear": LinearLabelMapping(1000, 10),
    }
    return transform, maps[mapping]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(args.threads)
    x, y = load_digits_tensors()
    train_idx, test_idx = split_indices(len(x), (0.6, 0.4), seed=0)
    train_idx = train_idx[: args.n_train]
    rows = []
    for prompt, mapping_name in CONFIGS:
        pl.seed_everything(args.seed, verbose=False)
        source, _ = load_efficientnet_lite0(image_size=args.size)
        fingerprint = module_fingerprint(source)
        transform, mapping = make_parts(prompt, mapping_name, args.size, args.placed, args.seed)
        module = ModelReprogramming(source, transform, mapping, lr=args.lr, source_name="efficientnet-lite0")
        train_loader = digits_loader(x[train_idx], y[train_idx], batch_size=args.batch_size, shuffle=True)
        if isinstance(mapping, FrequencyLabelMapping):  # the mapping alone, under the initial prompt
            module.remap(digits_loader(x[train_idx], y[train_idx], batch_size=256))
            module.remap_history.clear()
        zero_step = accuracy(module.model, x[test_idx], y[test_idx], batch_size=256)
        timer = EpochTimer()
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=args.epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        trainer.fit(module, train_loader)
        final = accuracy(module.model, x[test_idx], y[test_idx], batch_size=256)
        row = {
            "prompt": prompt,
            "mapping": mapping_name,
            "zero_step_acc": zero_step,
            "test_acc": final,
            "trainable_params": module.model.num_trainable_parameters(),
            "prompt_params_in_mask": transform.num_prompt_parameters,
            "s_per_epoch": sum(timer.times) / max(1, len(timer.times)),
            "remaps": len(module.remap_history),
            "source_unchanged": module_fingerprint(source) == fingerprint,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--size", type=int, default=64, help="source resolution (px)")
    parser.add_argument("--placed", type=int, default=32, help="digits are resized to this size (px)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hardware", default="2-core shared CPU, 1 thread")
    parser.add_argument("--out", default="benchmarks/results/reprogramming_digits.json")
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = run(args)
    print(
        f"\nEfficientNet-Lite0 (ImageNet) -> digits, {args.n_train} train / 719 test samples, {args.epochs} epochs, "
        f"{args.placed}px digits in {args.size}px, chance 10%. Hardware: {args.hardware}.\n"
    )
    print("| prompt | mapping | test acc before training | test acc after | trainable params | s/epoch |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['prompt']} | {r['mapping']} | {r['zero_step_acc']:.3f} | {r['test_acc']:.3f} | "
            f"{r['trainable_params']} | {r['s_per_epoch']:.1f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {**vars(args), "python": platform.python_version(), "torch": torch.__version__}
    meta["total_s"] = time.perf_counter() - t0
    out.write_text(json.dumps({"config": meta, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
