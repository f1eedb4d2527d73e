"""Relabel N samples of a pre-trained digits classifier with a small additive side network, hard margin.

The base (a SmallCNN trained on 60% of scikit-learn's digits) is frozen; a ReLU side network ``g`` smaller
than the base (:class:`lightning_reuse.nn.AdditiveModel`, ``F = f + g``) is trained so that N chosen
training samples get a new label (a class the base does not predict) while every other training sample
keeps the base's prediction. Every training sample is a hard constraint: the margin of its target class
(the new label for the N, the base's prediction for the others) over the best other class must reach
``margin``. Training is an augmented Lagrangian (Powell-Hestenes-Rockafellar for inequalities): full-batch
Adam on ``penalty * mean(g^2) + sum_i ((lam_i + rho c_i)_+^2 - lam_i^2) / (2 rho)`` with
``c_i = margin - margin_i``, i.e. each sample weighted by ``(lam_i + rho c_i)_+``; every ``inner_steps``
steps the multipliers rise, ``lam_i <- (lam_i + rho c_i)_+``, and ``rho`` grows while violations remain.
Training stops at the first step with 0 violations (checked on the parameters that are returned), or at
``max_steps`` (reported as ``hit_step_cap``).

Reported per (N, seed): flips achieved, other training predictions changed (goal: none), held-out
predictions changed, accuracies, side and base parameters (``count_parameters``), steps, and the side size
that the fine-tuning capacity formula asks for with the side network's 10 outputs (``num_outputs=10``;
``ftc_formula_m_one_output`` is the paper's scalar-output count, for reference). Each seed draws its own
split, base, N samples, new labels and side initialisation.

Run (2-core CPU, 1 thread; about a minute):
    python recipes/additive_relabel.py --json benchmarks/results/additive_relabel.json  # N 5 10 20 40, 3 seeds
    python recipes/additive_relabel.py --layer pool --width 40 32 --json benchmarks/results/additive_relabel_pool.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from lightning_reuse import fine_tuning_capacity
from lightning_reuse.nn import AdditiveModel, count_parameters
from lightning_reuse.samples import SmallCNN, load_digits_tensors, split_indices, train_classifier

NUM_CLASSES = 10


@dataclass(frozen=True)
class HardMarginConfig:
    """Augmented-Lagrangian settings (defaults: the ones the published numbers used)."""

    margin: float = 0.5  # target logit minus the best other logit, required on every training sample
    lr: float = 1e-2  # Adam, full batch
    rho: float = 1.0  # initial penalty coefficient
    rho_growth: float = 2.0  # rho *= rho_growth after a round that did not halve the violations
    rho_max: float = 1e3
    inner_steps: int = 25  # Adam steps between multiplier updates
    max_steps: int = 6000  # step cap, reported when hit
    penalty: float = 1.0  # weight of mean(g^2): the objective, keeps g small where nothing asks for it
    polish_steps: int = 2000  # after 0 violations, go on this many steps; the last 0-violation state is kept

    def __post_init__(self) -> None:
        for name in ("margin", "lr", "rho", "rho_max"):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"`{name}` must be > 0, got {getattr(self, name)!r}. HINT: pass a positive value."
                )
        if (
            self.rho_growth < 1
            or self.inner_steps < 1
            or self.max_steps < 0
            or self.penalty < 0
            or self.polish_steps < 0
        ):
            raise ValueError(
                "`rho_growth` must be >= 1, `inner_steps` >= 1, `max_steps`, `penalty` and `polish_steps` >= 0; "
                f"got {self.rho_growth!r}, {self.inner_steps!r}, {self.max_steps!r}, {self.penalty!r}, "
                f"{self.polish_steps!r}. "
                "HINT: the defaults are HardMarginConfig()."
            )


def class_margins(logits: Tensor, labels: Tensor) -> Tensor:
    """``logits[i, labels[i]] - max_{c != labels[i]} logits[i, c]``; > 0 iff ``labels[i]`` is the strict argmax."""
    target = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return target - others.max(dim=1).values


@torch.no_grad()
def predict(model: torch.nn.Module, x: Tensor) -> Tensor:
    model.eval()
    return model(x).argmax(-1)


@torch.no_grad()
def min_margin(model: torch.nn.Module, x: Tensor, labels: Tensor) -> float:
    """The smallest margin of ``labels`` in ``model(x)`` (> 0: every label is the strict prediction)."""
    model.eval()
    return float(class_margins(model(x), labels).min())


def relabel_targets(pred_train: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Choose ``n`` training samples and a different label for each; return ``(chosen, new_label, target)``.

    ``target`` is the base's prediction everywhere but at ``chosen``, where it is ``new_label``.
    """
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(pred_train), generator=g)[:n]
    new_label = (pred_train[chosen] + 1 + torch.randint(0, 9, (n,), generator=g)) % NUM_CLASSES
    target = pred_train.clone()
    target[chosen] = new_label
    return chosen, new_label, target


class _Multipliers:
    """Per-sample multipliers ``lam`` and the penalty coefficient ``rho`` of the augmented Lagrangian."""

    def __init__(self, num_samples: int, config: HardMarginConfig) -> None:
        self.config, self.lam, self.rho = config, torch.zeros(num_samples), config.rho
        self.best = num_samples + 1  # fewest violations seen at a multiplier update

    def loss(self, delta: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """The augmented Lagrangian and the per-sample weights ``(lam + rho c)_+``."""
        weight = (self.lam + self.rho * c).clamp(min=0)
        penalty = self.config.penalty * delta.pow(2).mean()
        return penalty + (weight.pow(2) - self.lam.pow(2)).sum() / (2 * self.rho), weight.detach()

    def update(self, weight: Tensor, violations: int) -> None:
        """``lam_i <- (lam_i + rho c_i)_+``; ``rho`` grows unless the violations halved since the best round."""
        self.lam = weight
        if violations > self.best // 2:
            self.rho = min(self.rho * self.config.rho_growth, self.config.rho_max)
        self.best = min(self.best, violations)


def fit_hard_margin(model: AdditiveModel, x: Tensor, target: Tensor, config: HardMarginConfig) -> dict:
    """Train ``model.side`` until every training sample's target margin reaches ``config.margin``.

    The base is frozen, so its output (and the side input) is computed once. After the first step with 0
    violations, ``config.polish_steps`` more steps lower ``mean(g^2)`` and the side keeps the parameters of
    the last step that had 0 violations. Returns the steps to 0 violations (or the cap), whether the cap
    was hit, the violations left, the final ``rho`` and largest multiplier, and seconds.
    """
    with torch.no_grad():
        h, base_out = model.side_input_and_base_output(x)
    side = model.side.train()
    opt = torch.optim.Adam(side.parameters(), lr=config.lr)
    multipliers, feasible, first_zero = _Multipliers(len(x), config), None, None
    start = time.perf_counter()
    for step in range(config.max_steps + config.polish_steps + 1):
        delta = side(h)
        c = config.margin - class_margins(base_out + delta, target)  # > 0: violated
        violations = int((c > 0).sum())
        if violations == 0:
            feasible = {k: v.detach().clone() for k, v in side.state_dict().items()}
            first_zero = step if first_zero is None else first_zero
        done = first_zero is not None and step >= first_zero + config.polish_steps
        if done or (first_zero is None and step == config.max_steps):
            break
        loss, weight = multipliers.loss(delta, c)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % config.inner_steps == 0:
            multipliers.update(weight, violations)
    if feasible is not None:
        side.load_state_dict(feasible)
    return {
        "steps": step if first_zero is None else first_zero,
        "polish_steps": 0 if first_zero is None else step - first_zero,
        "hit_step_cap": first_zero is None,
        "violations_left": 0 if first_zero is not None else violations,
        "rho_final": multipliers.rho,
        "max_multiplier": float(multipliers.lam.max()),
        "fit_seconds": time.perf_counter() - start,
    }


def train_base(x: Tensor, y: Tensor, seed: int) -> tuple[torch.nn.Module, Tensor, Tensor]:
    """The frozen base of one seed: a SmallCNN (width 16) on 60% of the digits; returns it and the split."""
    train_idx, held_idx = split_indices(len(x), (0.6, 0.4), seed=seed)
    torch.manual_seed(seed)
    base = train_classifier(SmallCNN(width=16), x[train_idx], y[train_idx], epochs=60, seed=seed)
    return base.requires_grad_(False).eval(), train_idx, held_idx


def relabel(
    base: torch.nn.Module,
    data: tuple[Tensor, Tensor, Tensor],
    n: int,
    side: tuple[str | None, int, tuple[int, ...]],
    config: HardMarginConfig,
    seed: int,
) -> dict:
    """Relabel ``n`` of the training samples ``data = (x_train, x_held, y_held)`` with a side network
    ``side = (layer, depth, widths)``; return one result row."""
    x_train, x_held, y_held = data
    layer, depth, widths = side
    pred_train, pred_held = predict(base, x_train), predict(base, x_held)
    chosen, new_label, target = relabel_targets(pred_train, n, seed)
    torch.manual_seed(seed)
    model = AdditiveModel.from_base(base, x_train[:2], width=widths, depth=depth, layer=layer)
    fit = fit_hard_margin(model, x_train, target, config)
    new_train, new_held = predict(model, x_train), predict(model, x_held)  # a real forward, not the cache
    others = torch.ones(len(x_train), dtype=torch.bool)
    others[chosen] = False
    return {
        "N": n,
        "seed": seed,
        "layer": layer or "input",
        "depth": depth,
        "widths": list(model.side.hidden_widths),
        "neurons": model.side.num_neurons,
        "ftc_formula_m": fine_tuning_capacity(n, depth, num_samples=len(x_train), num_outputs=NUM_CLASSES),
        "ftc_formula_m_one_output": fine_tuning_capacity(n, depth, num_samples=len(x_train)),
        "flipped": int((new_train[chosen] == new_label).sum()),
        "train_others": int(others.sum()),
        "train_others_changed": int((new_train[others] != pred_train[others]).sum()),
        "min_margin_kept": min_margin(model, x_train[others], pred_train[others]),
        "held_out": len(x_held),
        "held_out_changed": int((new_held != pred_held).sum()),
        "held_acc_before": float((pred_held == y_held).float().mean()),
        "held_acc_after": float((new_held == y_held).float().mean()),
        "side_params": count_parameters(model.side).trainable,
        "base_params": count_parameters(base).total,
        **fit,
    }


def run(
    ns: list[int],
    seeds: list[int],
    side: tuple[str | None, int, tuple[int, ...]],
    config: HardMarginConfig,
    num_train: int | None = None,
) -> list[dict]:
    """All (seed, N) rows; ``num_train`` keeps only the first training samples (a reduced configuration)."""
    x, y = load_digits_tensors()
    rows = []
    for seed in seeds:
        base, train_idx, held_idx = train_base(x, y, seed)
        train_idx = train_idx[:num_train] if num_train else train_idx
        data = (x[train_idx], x[held_idx], y[held_idx])
        rows += [relabel(base, data, n, side, config, seed) for n in ns]
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        "\n| N | seed | widths | side / base params | FTC m (10 outputs) | steps | flipped | "
        "other train changed | min kept margin | held-out changed | held-out acc before -> after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cap = " (cap)" if r["hit_step_cap"] else ""
        print(
            f"| {r['N']} | {r['seed']} | {r['widths']} | {r['side_params']:,} / {r['base_params']:,} | "
            f"{r['ftc_formula_m']} | {r['steps']}{cap} | {r['flipped']}/{r['N']} | "
            f"{r['train_others_changed']}/{r['train_others']} | {r['min_margin_kept']:.3f} | "
            f"{r['held_out_changed']}/{r['held_out']} | {r['held_acc_before']:.3f} -> {r['held_acc_after']:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[5, 10, 20, 40], help="labels to change")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--layer", default=None, help="base layer the side reads (default: the input)")
    parser.add_argument("--depth", type=int, default=3, choices=[2, 3])
    parser.add_argument("--width", type=int, nargs="+", default=[24, 24], help="hidden widths")
    parser.add_argument("--margin", type=float, default=HardMarginConfig.margin)
    parser.add_argument("--max-steps", type=int, default=HardMarginConfig.max_steps)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = HardMarginConfig(margin=args.margin, max_steps=args.max_steps)
    widths = tuple(args.width) if len(args.width) > 1 else args.width[0]
    rows = run(args.n, args.seeds, (args.layer, args.depth, widths), config)
    print_table(rows)
    if args.json:
        payload = {"hardware": "CPU, 1 thread", "config": asdict(config), "rows": rows}
        args.json.write_text(json.dumps(payload, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
