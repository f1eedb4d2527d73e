"""Relabel N samples of a pre-trained digits classifier with a small additive side network.

The base (a SmallCNN trained on 60% of scikit-learn's digits) is frozen; a small ReLU side network g is
trained with :class:`lightning_reuse.AdditiveFineTuning` so that N chosen training samples
get a new label (the base's prediction shifted by one class) while every other training sample keeps the
base's prediction. Reported: how many of the N flipped, how many other predictions changed on the
training set (goal: none) and on the held-out 40%, accuracies, parameter counts and the side size that
the fine-tuning capacity formula asks for, counted for the side network's 10 outputs (``num_outputs=10``,
like with like; ``ftc_formula_m_one_output`` is the paper's scalar-output count, for reference).

Run (2-core CPU, 1 thread; a few minutes):
    python recipes/additive_relabel.py --json benchmarks/results/additive_relabel.json  # N in 5 10 20 40
    python recipes/additive_relabel.py --n 10 --layer pool --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_reuse import AdditiveFineTuning, fine_tuning_capacity
from lightning_reuse.modules.additive import IGNORE_INDEX
from lightning_reuse.nn import AdditiveModel, format_parameter_count
from lightning_reuse.samples import SmallCNN, accuracy, load_digits_tensors, split_indices, train_classifier

NUM_CLASSES = 10


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(x).argmax(-1)


def relabel_targets(
    pred_train: torch.Tensor, n: int, keep: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose ``n`` training samples and a different label for each; return ``(chosen, new_label, target)``.

    keep="penalty": the others carry no label term (-100), only the output penalty keeps F == f there;
    keep="ce": the others are labelled with the base's own prediction.
    """
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(pred_train), generator=g)[:n]
    new_label = (pred_train[chosen] + 1 + torch.randint(0, 9, (n,), generator=g)) % 10  # a different class
    target = torch.full_like(pred_train, IGNORE_INDEX) if keep == "penalty" else pred_train.clone()
    target[chosen] = new_label
    return chosen, new_label, target


def fit_side(
    module: AdditiveFineTuning,
    x_train: torch.Tensor,
    target: torch.Tensor,
    chosen: torch.Tensor,
    keep: str,
    epochs: int,
) -> float:
    """Full-batch fit; the N changed samples are repeated (keep="ce") to weigh as much as all the others."""
    n = len(chosen)
    reps = max(1, (len(x_train) - n) // n) if keep == "ce" else 1
    x_fit = torch.cat([x_train, x_train[chosen].repeat(reps - 1, 1, 1, 1)])
    t_fit = torch.cat([target, target[chosen].repeat(reps - 1)])
    loader = DataLoader(TensorDataset(x_fit, t_fit), batch_size=len(x_fit))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module, loader)
    return time.perf_counter() - start


def relabel(
    base: torch.nn.Module,
    x_train: torch.Tensor,
    x_held: torch.Tensor,
    y_held: torch.Tensor,
    n: int,
    layer: str | None,
    depth: int,
    width: int | None,
    epochs: int,
    penalty: float,
    keep: str,
    seed: int,
) -> dict:
    pred_train, pred_held = predict(base, x_train), predict(base, x_held)
    chosen, new_label, target = relabel_targets(pred_train, n, keep, seed)
    # like with like: the side network has 10 outputs (logits), so the formula counts 10 outputs too
    m_formula = fine_tuning_capacity(n, depth, num_samples=len(x_train), num_outputs=NUM_CLASSES)
    width = width or max(8, m_formula // (depth - 1))
    torch.manual_seed(seed)
    model = AdditiveModel.from_base(base, x_train[:2], width=width, depth=depth, layer=layer)
    module = AdditiveFineTuning(base, model.side, layer=layer, lr=1e-2, output_penalty=penalty)
    seconds = fit_side(module, x_train, target, chosen, keep, epochs)
    new_train, new_held = predict(module, x_train), predict(module, x_held)
    others = torch.ones(len(x_train), dtype=torch.bool)
    others[chosen] = False
    counts = module.parameter_count()
    return {
        "N": n,
        "layer": layer or "input",
        "depth": depth,
        "width": width,
        "neurons": module.model.side.num_neurons,
        "ftc_formula_m": m_formula,
        "ftc_formula_m_one_output": fine_tuning_capacity(n, depth, num_samples=len(x_train)),
        "keep": keep,
        "flipped": int((new_train[chosen] == new_label).sum()),
        "train_others": int(others.sum()),
        "train_others_changed": int((new_train[others] != pred_train[others]).sum()),
        "held_out": len(x_held),
        "held_out_changed": int((new_held != pred_held).sum()),
        "held_acc_before": float((pred_held == y_held).float().mean()),
        "held_acc_after": float((new_held == y_held).float().mean()),
        "trainable_params": counts.trainable,
        "total_params": counts.total,
        "params_line": format_parameter_count(counts),
        "fit_seconds": seconds,
    }


def print_table(rows: list[dict]) -> None:
    print(
        "\n| N | keep | side reads | depth | width | m | FTC formula m | flipped | other train changed | "
        "held-out changed | held-out acc before -> after | trainable / total params |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['N']} | {r['keep']} | {r['layer']} | {r['depth']} | {r['width']} | {r['neurons']} | {r['ftc_formula_m']} | "
            f"{r['flipped']}/{r['N']} | {r['train_others_changed']}/{r['train_others']} | "
            f"{r['held_out_changed']}/{r['held_out']} | {r['held_acc_before']:.3f} -> {r['held_acc_after']:.3f} | "
            f"{r['trainable_params']:,} / {r['total_params']:,} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[5, 10, 20, 40], help="labels to change")
    parser.add_argument("--layer", default=None, help="base layer the side reads (default: the input)")
    parser.add_argument("--depth", type=int, default=3, choices=[2, 3])
    parser.add_argument(
        "--width", type=int, default=64, help="hidden width per layer (0: from the FTC formula)"
    )
    parser.add_argument("--epochs", type=int, default=600, help="full-batch steps")
    parser.add_argument("--keep", choices=["penalty", "ce"], default="ce", help="how the others are kept")
    parser.add_argument("--penalty", type=float, default=0.1, help="weight of mean(g^2) (keeps the rest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # the frozen base is eval on purpose
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    x, y = load_digits_tensors()
    train_idx, held_idx = split_indices(len(x), (0.6, 0.4), seed=args.seed)
    torch.manual_seed(args.seed)
    base = train_classifier(SmallCNN(width=16), x[train_idx], y[train_idx], epochs=60, seed=args.seed)
    base.requires_grad_(False)
    print(f"base: SmallCNN, held-out accuracy {accuracy(base, x[held_idx], y[held_idx]):.3f}")

    rows = [
        relabel(
            base,
            x[train_idx],
            x[held_idx],
            y[held_idx],
            n,
            args.layer,
            args.depth,
            args.width,
            args.epochs,
            args.penalty,
            args.keep,
            args.seed,
        )
        for n in args.n
    ]
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"hardware": "CPU, 1 thread", "rows": rows}, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
