"""WiSE-FT: the interpolation against its formula, and the callback's sweep in a real fit."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reuse._warnings import LightningReuseWarning
from lightning_reuse.callbacks import WiSEFT
from lightning_reuse.optim import interpolate_state_dicts


def test_interpolation_matches_formula_endpoints_exact_and_new_entries_kept() -> None:
    torch.manual_seed(0)
    pre = {
        "w": torch.randn(3, 2),
        "bn.running_mean": torch.randn(2),
        "bn.num_batches_tracked": torch.tensor(0),
    }
    ft = {
        k: v + torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v + 5
        for k, v in pre.items()
    }
    ft["head.weight"] = torch.randn(4, 2)
    for a in (0.0, 0.3, 1.0):
        mixed = interpolate_state_dicts(pre, ft, a)
        for key in ("w", "bn.running_mean"):
            assert torch.allclose(mixed[key], (1 - a) * pre[key] + a * ft[key], atol=1e-6)
        assert torch.equal(mixed["head.weight"], ft["head.weight"])
        assert torch.equal(mixed["bn.num_batches_tracked"], ft["bn.num_batches_tracked"])
    assert torch.equal(interpolate_state_dicts(pre, ft, 0.0)["w"], pre["w"])
    assert torch.equal(interpolate_state_dicts(pre, ft, 1.0)["w"], ft["w"])
    wrapped = interpolate_state_dicts({"module.w": pre["w"]}, {"_orig_mod.w": ft["w"]}, 0.5)
    assert torch.allclose(wrapped["_orig_mod.w"], (pre["w"] + ft["w"]) / 2)
    with pytest.raises(ValueError, match="alpha"):
        interpolate_state_dicts(pre, ft, 1.5)


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


class Accuracy:  # a picklable eval_fn
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __call__(self, module: pl.LightningModule) -> dict[str, float]:
        assert not module.training and not torch.is_grad_enabled()
        logits = module(self.x)
        return {
            "acc": float((logits.argmax(1) == self.y).float().mean()),
            "loss": float(nn.functional.cross_entropy(logits, self.y)),
        }


def test_callback_sweeps_logs_and_leaves_model_at_best_alpha(tmp_path: Path) -> None:
    model = Classifier()
    pre = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data(1)
    xv, yv = _data(2)
    cb = WiSEFT(alphas=(0.0, 0.5, 1.0), alpha="best", eval_fn=Accuracy(xv, yv), monitor="loss", mode="min")
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=3,
        logger=CSVLogger(tmp_path),
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=16))
    assert [r["alpha"] for r in cb.results] == [0.0, 0.5, 1.0]
    best = min(cb.results, key=lambda r: r["loss"])
    assert cb.chosen_alpha == best["alpha"]
    # alpha = 0 evaluates the pre-trained body with the fine-tuned head (the head is excluded by default)
    pre_body = {k: v for k, v in pre.items() if not k.startswith("head.")}
    check = Classifier()
    check.load_state_dict(interpolate_state_dicts(pre_body, cb.finetuned, 0.0))
    check.eval()
    with torch.no_grad():
        assert cb.results[0]["loss"] == pytest.approx(Accuracy(xv, yv)(check)["loss"], rel=1e-6)
    # the model is left exactly at the chosen interpolation (buffers included)
    expected = interpolate_state_dicts(pre_body, cb.finetuned, cb.chosen_alpha)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    rows = list(csv.DictReader(open(Path(trainer.logger.log_dir) / "metrics.csv")))
    assert [float(r["wise_ft/alpha"]) for r in rows if r.get("wise_ft/alpha")] == [0.0, 0.5, 1.0]
    assert any(r.get("wise_ft/chosen_alpha") for r in rows)
    assert cb.state_dict()["pretrained"].keys() == pre.keys()


def _fit_at_alpha_zero(cb: WiSEFT, tmp_path: Path) -> tuple[Classifier, dict[str, torch.Tensor]]:
    model = Classifier()
    pre = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(*_data(1)), batch_size=16))
    return model, pre


@pytest.mark.parametrize("how", ["default", "module", "predicate", "list"])
def test_excluded_head_keeps_its_fine_tuned_value_at_alpha_zero(tmp_path: Path, how: str) -> None:
    if how == "default":
        cb = WiSEFT(alphas=(0.0,), alpha=0.0)
    elif how == "predicate":
        cb = WiSEFT(alphas=(0.0,), alpha=0.0, exclude=lambda name, t: name.startswith("head."))
    elif how == "list":
        cb = WiSEFT(alphas=(0.0,), alpha=0.0, exclude=["head.weight", "head.bias"])
    else:
        cb = WiSEFT(alphas=(0.0,), alpha=0.0)  # the module object is set below, once the model exists
    if how == "module":
        model = Classifier()
        cb.exclude = model.head
        pre = {k: v.clone() for k, v in model.state_dict().items()}
        pl.Trainer(
            default_root_dir=tmp_path,
            accelerator="cpu",
            max_epochs=1,
            logger=False,
            callbacks=[cb],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        ).fit(model, DataLoader(TensorDataset(*_data(1)), batch_size=16))
    else:
        model, pre = _fit_at_alpha_zero(cb, tmp_path)
    assert cb.excluded_keys == {"head.weight", "head.bias"}
    state = model.state_dict()
    for key in ("head.weight", "head.bias"):
        assert not torch.equal(cb.finetuned[key], pre[key])  # fine-tuning moved the head
        assert torch.equal(state[key], cb.finetuned[key]), key
    for key in ("body.0.weight", "body.1.running_mean"):
        assert torch.equal(state[key], pre[key]), key  # the body is back at its pre-trained value


def test_exclude_none_interpolates_every_entry_and_unmatched_rule_warns(tmp_path: Path) -> None:
    model, pre = _fit_at_alpha_zero(WiSEFT(alphas=(0.0,), alpha=0.0, exclude=None), tmp_path)
    for key, value in model.state_dict().items():
        if value.is_floating_point():  # every float entry, the head included, is at its fit-start value
            assert torch.equal(value, pre[key]), key
    with pytest.warns(LightningReuseWarning, match="`exclude` rule 'classifier' matches no parameter"):
        model, pre = _fit_at_alpha_zero(WiSEFT(alphas=(0.0,), alpha=0.0, exclude="classifier"), tmp_path)
    assert torch.equal(model.head.weight, pre["head.weight"])


def test_fixed_alpha_without_eval_and_validation() -> None:
    with pytest.raises(ValueError, match="needs `eval_fn`"):
        WiSEFT(alpha="best")
    with pytest.raises(ValueError, match="alphas"):
        WiSEFT(alphas=(0.0, 2.0))
    with pytest.raises(ValueError, match="`alpha` must be"):
        WiSEFT(alpha=-0.1)
    cb = WiSEFT(alpha=0.25)
    restored = WiSEFT(alpha=0.25)
    restored.load_state_dict({"pretrained": {"w": torch.ones(1)}, "chosen_alpha": None, "results": []})
    assert torch.equal(restored.pretrained["w"], torch.ones(1)) and cb.pretrained is None


def test_sweep_is_a_wandb_table_in_an_offline_run(tmp_path: Path, wandb_offline) -> None:
    import wandb

    from tests.helpers.wandb_read import find_offline_run_dirs, read_offline_run

    x, y = _data(1)
    cb = WiSEFT(alphas=(0.0, 1.0), alpha="best", eval_fn=Accuracy(*_data(2)), monitor="acc")
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=1,
        logger=wandb_offline(name="wise"),
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(Classifier(), DataLoader(TensorDataset(x, y), batch_size=16))
    wandb.finish()
    run_dir = find_offline_run_dirs(tmp_path)[0]
    run = read_offline_run(run_dir)
    tables = [h for h in run["history"] if h.get("wise_ft/sweep/_type") == "table-file"]
    assert len(tables) == 1 and tables[0]["wise_ft/sweep/nrows"] == 2
    table = json.loads((run_dir / "files" / tables[0]["wise_ft/sweep/path"]).read_text())
    assert table["columns"] == ["alpha", "acc", "loss"]
    assert [row[0] for row in table["data"]] == [0.0, 1.0]
    assert [h["wise_ft/alpha"] for h in run["history"] if "wise_ft/alpha" in h] == [0.0, 1.0]
