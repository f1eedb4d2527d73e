"""RESQUECheck in real Lightning fits: exact scores, model left untouched, thresholds, logging, ledger, DDP."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger

from lightning_reuse.callbacks.resque_check import RESQUECheck, RESQUEThresholdWarning
from lightning_reuse.energy.ledger import RetrainingLedger
from lightning_reuse.functional import pool_features, resque_dist, resque_task
from lightning_reuse.functional.resque import RESQUEClassSkippedWarning
from lightning_reuse.nn.layers import LayerNotFoundError, capture_output
from lightning_reuse.samples.digits import apply_shift, digits_loader, load_digits_tensors
from lightning_reuse.samples.models import SmallCNN, train_classifier


class Classifier(pl.LightningModule):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = SmallCNN(num_classes=num_classes, width=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, _: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class RecordingLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[dict[str, float], int | None]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((dict(metrics), step))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def snapshot(module: torch.nn.Module) -> dict[str, Any]:
    return {
        "params": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in module.named_parameters()},
        "requires_grad": {k: p.requires_grad for k, p in module.named_parameters()},
        "modes": {k: m.training for k, m in module.named_modules()},
        "torch_rng": torch.get_rng_state(),
        "np_rng": np.random.get_state()[1].copy(),  # noqa: NPY002
        "py_rng": random.getstate(),
        "grad_enabled": torch.is_grad_enabled(),
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    for k, g in a["grads"].items():
        assert (g is None and b["grads"][k] is None) or torch.equal(g, b["grads"][k]), k
    for key in ("requires_grad", "modes", "py_rng", "grad_enabled"):
        assert a[key] == b[key], key
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert np.array_equal(a["np_rng"], b["np_rng"])


class Probe(pl.Callback):
    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state = snapshot(pl_module)


def digits(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits_tensors()
    return x[:n], y[:n]


def trainer_for(tmp_path: Path, callbacks: list[pl.Callback], logger: Any = False, **kw: Any) -> pl.Trainer:
    kw.setdefault("max_epochs", 1)
    kw.setdefault("limit_train_batches", 2)
    kw.setdefault("limit_val_batches", 0)
    return pl.Trainer(
        default_root_dir=tmp_path,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def features_of(model: Classifier, x: torch.Tensor, layer: str = "net.block2") -> torch.Tensor:
    with torch.no_grad(), capture_output(model, layer) as store:
        model.eval()(x)
    return pool_features(store["output"])


def test_dist_check_is_exact_and_leaves_the_model_exactly_as_it_was(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x, y = digits()
    shifted = apply_shift(x, "noise", 0.3, seed=1)
    model = Classifier()
    model.train()
    model.net.block1.eval()  # mixed modes must come back as they were
    model.net.head.weight.grad = torch.randn_like(model.net.head.weight)  # stale grads stay
    model.net.block2[0].bias.requires_grad_(False)
    before, after, logger = Probe(), Probe(), RecordingLogger()
    check = RESQUECheck(
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(shifted, y), batch_size=32, shuffle=True),
        layer="net.block2",
        original_dataloader=digits_loader(x, y, batch_size=50),
        num_classes=10,
    )
    trainer = trainer_for(tmp_path, [before, check, after], logger=logger)
    trainer.fit(model, digits_loader(x, y))
    assert_same(before.state, after.state)
    assert trainer.global_step == 2  # training went on
    expected, per_class = resque_dist(
        features_of(model_at_start(before.state), x),
        y,
        features_of(model_at_start(before.state), shifted),
        y,
        return_per_class=True,
    )
    assert check.result.score == pytest.approx(float(expected), abs=1e-12)
    assert check.result.n_samples == {"original": 300, "shifted": 300}
    logged, step = logger.calls[0]
    assert step == 0 and logged["resque/score"] == pytest.approx(float(expected), abs=1e-12)
    assert [logged[f"resque/class_{c}"] for c in range(10)] == pytest.approx(per_class.tolist(), abs=1e-12)
    assert check.state_dict()["score"] == check.result.score


def model_at_start(state: dict[str, Any]) -> Classifier:
    model = Classifier()
    model.load_state_dict(state["params"])
    return model


def test_task_check_thresholds_warn_and_stop(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x, y = digits()
    parity = y % 2
    check = RESQUECheck(digits_loader(x, parity), layer="net.block2", warn_above=0.0, stop_above=0.0)
    trainer = trainer_for(tmp_path, [check])
    model = Classifier(num_classes=2)
    with pytest.warns(RESQUEThresholdWarning, match="RESQUE_task = .* above warn_above=0.0"):
        trainer.fit(model, digits_loader(x, parity))
    assert check.result.mode == "task" and check.result.stopped
    assert trainer.global_step == 0  # stopped before the first step
    assert check.result.score == pytest.approx(float(resque_task(features_of(model, x), parity)), abs=1e-12)
    reservoir = RESQUECheck(digits_loader(x, parity), layer="net.block2", num_classes=2, reservoir_size=1000)
    assert reservoir.run(trainer, model).score == pytest.approx(check.result.score, abs=1e-12)


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    x, y = digits(64)
    model = Classifier()
    trainer = trainer_for(tmp_path, [])
    with pytest.raises(LayerNotFoundError, match="Did you mean: 'net.block2'"):
        RESQUECheck(digits_loader(x, y), layer="net.blok2").run(trainer, model)
    with pytest.raises(ValueError, match="empty"):
        RESQUECheck(digits_loader(x[:0], y[:0]), layer="net.block2").run(trainer, model)
    with pytest.raises(ValueError, match=r"unlabeled batches.*label_source='prediction'"):
        RESQUECheck(
            digits_loader(x), layer="net.block2", original_dataloader=digits_loader(x, y), num_classes=10
        ).run(trainer, model)
    with pytest.raises(ValueError, match="at least 2 classes"):
        RESQUECheck(digits_loader(x, y * 0), layer="net.block2").run(trainer, model)
    nan_model = Classifier()
    nan_model.net.block2[0].bias.data.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or inf"):
        RESQUECheck(digits_loader(x, y), layer="net.block2").run(trainer, nan_model)
    with pytest.raises(ValueError, match="num_classes"):
        RESQUECheck(digits_loader(x, y), layer="net.block2", original_dataloader=digits_loader(x, y))
    with pytest.raises(ValueError, match="record_to_ledger"):
        RESQUECheck(digits_loader(x, y), layer="net.block2", record_to_ledger=True)
    keep = y != 3
    check = RESQUECheck(
        digits_loader(x[keep], y[keep]),
        layer="net.block2",
        original_dataloader=digits_loader(x, y),
        num_classes=10,
    )
    with pytest.warns(RESQUEClassSkippedWarning, match=r"\[3\]"):
        result = check.run(trainer, model)
    assert 3 not in result.per_class and len(result.per_class) == 9


def test_unlabeled_shifted_data_grouped_by_predictions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x, y = digits(200)
    model = Classifier()
    train_classifier(model.net, x, y, epochs=30)
    preds = model(x).argmax(-1)
    assert not torch.equal(preds, y)  # grouping by predictions differs from grouping by labels
    check = RESQUECheck(
        digits_loader(x),
        layer="net.block2",
        original_dataloader=digits_loader(x, y),
        num_classes=10,
        label_source="prediction",
    )
    missing = len(preds.unique()) < 10  # a class never predicted is skipped, with a warning
    with pytest.warns(RESQUEClassSkippedWarning) if missing else contextlib.nullcontext():
        result = check.run(trainer_for(tmp_path, []), model)
    with pytest.warns(RESQUEClassSkippedWarning) if missing else contextlib.nullcontext():
        expected = resque_dist(features_of(model, x), y, features_of(model, x), preds, num_classes=10)
    assert len(result.per_class) == len(preds.unique()) and result.score > 0.0
    assert result.score == pytest.approx(float(expected), abs=1e-12)


def test_ledger_estimate_record_and_energy_window(tmp_path: Path) -> None:
    from lightning_reuse.callbacks.energy_monitor import EnergyMonitor

    torch.manual_seed(0)
    x, y = digits(200)
    ledger = RetrainingLedger(tmp_path / "ledger.sqlite")
    for s, e in [(0.01, 2), (0.02, 3), (0.04, 5), (0.05, 7)]:
        ledger.add_run(s, epochs_to_target=e, energy_wh=e * 0.1, variant="dist")
    monitor, logger = EnergyMonitor(backend="simulated"), RecordingLogger()
    check = RESQUECheck(
        digits_loader(apply_shift(x, "blur", 1.0), y),
        layer="net.block2",
        original_dataloader=digits_loader(x, y),
        num_classes=10,
        ledger=ledger,
        record_to_ledger=True,
        target=("val_acc", 0.0),
    )
    trainer = trainer_for(tmp_path, [monitor, check], logger=logger, limit_val_batches=1)
    trainer.fit(Classifier(), digits_loader(x, y), digits_loader(x, y))
    result = check.result
    assert result.estimates["epochs_to_target"].available and not result.estimates["co2_g"].available
    assert result.energy == monitor.windows["resque-precheck"] and result.energy.energy_wh > 0
    logged = logger.calls[0][0]
    assert logged["resque/estimated_epochs_to_target"] == pytest.approx(
        result.estimates["epochs_to_target"].value
    )
    assert logged["resque/energy_wh"] == pytest.approx(result.energy.energy_wh)
    runs = ledger.runs()
    assert len(runs) == 5 and runs[-1].score == result.score and runs[-1].epochs_to_target == 1
    assert runs[-1].energy_wh == pytest.approx(monitor.total.energy_wh)


def test_wandb_table_and_bar_plot(tmp_path: Path, wandb_offline: Any) -> None:
    import wandb

    from tests.helpers.wandb_read import find_offline_run_dirs, read_offline_run

    x, y = digits(100)
    check = RESQUECheck(
        digits_loader(x.flip(-1), y),
        layer="net.block2",
        original_dataloader=digits_loader(x, y),
        num_classes=10,
    )
    trainer = trainer_for(tmp_path, [check], logger=wandb_offline(name="resque"), max_epochs=1)
    trainer.fit(Classifier(), digits_loader(x, y))
    wandb.finish()
    run = read_offline_run(find_offline_run_dirs(tmp_path)[0])
    assert {"resque/score", "resque/class_0"} <= run["keys"]
    assert "resque/baseline/logme" in run["keys"]
    assert any("resque/baselines/_type" in r for r in run["history"])  # the scores side by side
    row = next(r for r in run["history"] if "resque/per_class/_type" in r)
    assert row["resque/per_class/_type"] == "table-file" and row["resque/per_class/nrows"] == 10
    assert row["resque/per_class_bar_table/_type"] == "table-file"  # the bar plot's data
    assert run["summary"]["resque/score"] == pytest.approx(check.result.score)


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_two_processes_equal_single_process(ddp_runner: Any, tmp_path: Path) -> None:
    result = ddp_runner(
        """
import lightning.pytorch as pl
from lightning_reuse.callbacks.resque_check import RESQUECheck
from lightning_reuse.samples.digits import apply_shift, digits_loader, load_digits_tensors
from tests.callbacks.test_resque_check import Classifier

torch.manual_seed(0)
x, y = load_digits_tensors()
x, y = x[:250], y[:250]
model = Classifier()
torch.save(model.state_dict(), "init.pt")
dist = RESQUECheck(digits_loader(apply_shift(x, "noise", 0.4, seed=2), y, batch_size=16), layer="net.block2",
                   original_dataloader=digits_loader(x, y, batch_size=16), num_classes=10, progress_bar=False)
task = RESQUECheck(digits_loader(x, y % 3, batch_size=16), layer="net.block2", log_prefix="task",
                   progress_bar=False)
trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ["LIGHTNING_REUSE_TEST_NPROCS"]), strategy="ddp",
                     max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=[dist, task])
trainer.fit(model, digits_loader(x, y))
torch.save({"dist": dist.result.score, "per_class": dist.result.per_class, "n": dist.result.n_samples,
            "task": task.result.score, "world": trainer.world_size}, f"rank{trainer.global_rank}.pt")
"""
    )
    r0, r1 = (torch.load(result.workdir / f"rank{r}.pt") for r in (0, 1))
    assert r0["world"] == 2 and r0 == r1
    x, y = load_digits_tensors()
    x, y = x[:250], y[:250]
    model = Classifier()
    model.load_state_dict(torch.load(result.workdir / "init.pt"))
    shifted = apply_shift(x, "noise", 0.4, seed=2)
    single, per_class = resque_dist(
        features_of(model, x), y, features_of(model, shifted), y, return_per_class=True
    )
    assert r0["dist"] == pytest.approx(float(single), abs=1e-12)
    assert list(r0["per_class"].values()) == pytest.approx(per_class.tolist(), abs=1e-12)
    assert r0["n"] == {"original": 250, "shifted": 250}
    assert r0["task"] == pytest.approx(float(resque_task(features_of(model, x), y % 3)), abs=1e-12)


def test_options_are_one_config_validated_at_construction() -> None:
    from lightning_reuse.functional import RESQUEConfig

    x, y = digits(64)
    check = RESQUECheck(digits_loader(x, y), layer="net.block2", num_classes=10, pooling="flatten")
    assert check.config == RESQUEConfig("net.block2", "task", 10, "flatten")
    assert check.mode == "task"
    with pytest.raises(ValueError, match=r"`pooling` must be one of .*got 'max'\. HINT:"):
        RESQUECheck(digits_loader(x, y), layer="net.block2", pooling="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`mode='dist'` compares two datasets.*HINT:"):
        RESQUECheck(digits_loader(x, y), layer="net.block2", mode="dist", num_classes=10)
    with pytest.raises(ValueError, match=r"`warn_above` must be a number or None, got 'high'\. HINT:"):
        RESQUECheck(digits_loader(x, y), layer="net.block2", warn_above="high")  # type: ignore[arg-type]


def test_flatten_pooling_reaches_the_pass(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x, y = digits(120)
    model = Classifier()
    check = RESQUECheck(digits_loader(x, y), layer="net.block2", pooling="flatten", progress_bar=False)
    result = check.run(trainer_for(tmp_path, []), model)
    with torch.no_grad(), capture_output(model, "net.block2") as store:
        model.eval()(x)
    expected = resque_task(pool_features(store["output"], "flatten"), y)
    assert result.score == pytest.approx(float(expected), abs=1e-12)


def test_default_batch_fn_is_the_package_batch_reader() -> None:
    from lightning_reuse.callbacks.resque_check import default_batch_fn

    x, y = torch.zeros(4, 1, 8, 8), torch.arange(4)
    assert default_batch_fn((x, y))[1] is y and default_batch_fn(x)[1] is None
    assert default_batch_fn({"input": x, "label": y})[0] is x
    with pytest.raises(TypeError, match=r"RESQUECheck \(or pass `batch_fn=`.*HINT:"):
        default_batch_fn(3)


def test_image_label_dicts_and_tuple_outputs_score_like_tuple_batches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x, y = digits(200)
    shifted = apply_shift(x, "noise", 0.2, seed=1)
    model, trainer = Classifier(), trainer_for(tmp_path, [])

    def dicts(images: torch.Tensor, key: str) -> list[dict[str, torch.Tensor]]:
        return [{"image": images[i : i + 50], key: y[i : i + 50]} for i in range(0, 200, 50)]

    def check(shifted_loader: Any, original_loader: Any, **kw: Any) -> float:
        return (
            RESQUECheck(
                shifted_loader, layer="net.block2", original_dataloader=original_loader, num_classes=10, **kw
            )
            .run(trainer, model)
            .score
        )

    expected = check(digits_loader(shifted, y), digits_loader(x, y))
    assert check(dicts(shifted, "label"), dicts(x, "labels")) == pytest.approx(expected, abs=1e-12)

    class TupleOut(Classifier):  # returns (logits, extra), as many models do
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.net(x), x.flatten(1)

    tuple_model = TupleOut()
    tuple_model.load_state_dict(model.state_dict())
    by_prediction = RESQUECheck(
        digits_loader(shifted),
        layer="net.block2",
        original_dataloader=digits_loader(x, y),
        num_classes=10,
        label_source="prediction",
    )
    preds = model(shifted).argmax(-1)
    missing = len(preds.unique()) < 10
    with pytest.warns(RESQUEClassSkippedWarning) if missing else contextlib.nullcontext():
        got = by_prediction.run(trainer, tuple_model).score
    with pytest.warns(RESQUEClassSkippedWarning) if missing else contextlib.nullcontext():
        want = resque_dist(features_of(model, x), y, features_of(model, shifted), preds, num_classes=10)
    assert got == pytest.approx(float(want), abs=1e-12)


def textures(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic texture set: 10 classes of noisy sine gratings (orientation and frequency per class)."""
    import math

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    i, j = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    images = []
    for c in labels.tolist():
        angle, freq, phase = math.pi * c / 10, 0.6 + 0.15 * (c % 3), float(torch.rand(1, generator=g)) * 6.28
        grating = torch.sin(freq * (i * math.cos(angle) + j * math.sin(angle)) + phase)
        images.append(grating + 0.3 * torch.randn(8, 8, generator=g))
    x = torch.stack(images)[:, None]
    return ((x - x.min()) / (x.max() - x.min())), labels


def test_dist_across_unrelated_datasets_warns_and_a_mild_shift_does_not(tmp_path: Path) -> None:
    import warnings

    from lightning_reuse.callbacks.resque_check import RESQUEAssumptionWarning

    torch.manual_seed(0)
    x, y = digits(600)
    model = Classifier()
    train_classifier(model.net, x, y, epochs=30)
    trainer = trainer_for(tmp_path, [])

    def run(shifted: torch.Tensor, labels: torch.Tensor) -> float:
        return (
            RESQUECheck(
                digits_loader(shifted, labels),
                layer="net.block2",
                original_dataloader=digits_loader(x, y),
                num_classes=10,
            )
            .run(trainer, model)
            .score
        )

    with pytest.warns(
        RESQUEAssumptionWarning, match=r"class specificity -?\d\.\d+ <= 0.*HINT: .*mode=\"task\""
    ):
        run(*textures())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RESQUEAssumptionWarning)
        for level in (0.1, 0.3):
            assert run(apply_shift(x, "noise", level, seed=1), y) > 0


def test_a_read_only_ledger_never_fails_a_finished_fit(tmp_path: Path, read_only_file: Any) -> None:
    from lightning_reuse.energy.ledger import LedgerWarning

    torch.manual_seed(0)
    x, y = digits(100)
    path = tmp_path / "ledger.sqlite"
    RetrainingLedger(path).add_run(0.01, epochs_to_target=2)
    read_only_file(path)
    check = RESQUECheck(
        digits_loader(apply_shift(x, "noise", 0.1, seed=1), y),
        layer="net.block2",
        original_dataloader=digits_loader(x, y),
        num_classes=10,
        ledger=path,
        record_to_ledger=True,
        target=("val_acc", 0.0),
    )
    trainer = trainer_for(tmp_path, [check], limit_val_batches=1)
    with pytest.warns(LedgerWarning, match=r"ledger\.sqlite\.pending\.jsonl"):
        trainer.fit(Classifier(), digits_loader(x, y), digits_loader(x, y))
    assert trainer.state.status == "finished" and not trainer.interrupted
    assert [r["score"] for r in check.ledger.pending()] == [check.result.score] and len(check.ledger) == 1


@pytest.mark.parametrize("mode", ["dist", "task"])
def test_baselines_equal_the_functional_scores_on_the_same_features(tmp_path: Path, mode: str) -> None:
    from lightning_reuse.functional import h_score, knn_accuracy, leep, linear_probe_accuracy, logme, nce

    torch.manual_seed(0)
    x, y = digits(200)
    shifted = apply_shift(x, "noise", 0.3, seed=1)
    new_y = y if mode == "dist" else y % 3  # a new task: three classes
    before, logger = Probe(), RecordingLogger()
    check = RESQUECheck(
        digits_loader(shifted, new_y, batch_size=32),
        layer="net.block2",
        original_dataloader=digits_loader(x, y, batch_size=50) if mode == "dist" else None,
        num_classes=10 if mode == "dist" else 3,
        progress_bar=False,
    )
    trainer_for(tmp_path, [before, check], logger=logger).fit(Classifier(), digits_loader(x, y))
    model = model_at_start(before.state)
    feats = features_of(model, shifted)
    with torch.no_grad():
        logits = model.eval()(shifted).double()
    expected = {
        "logme": logme(feats, new_y),
        "h_score": h_score(feats, new_y),
        "knn_accuracy": knn_accuracy(feats, new_y),
        "linear_probe_accuracy": linear_probe_accuracy(feats, new_y),
        "leep": leep(logits.softmax(-1), new_y),
        "nce": nce(logits.argmax(-1), new_y),
    }
    if mode == "dist":
        expected["source_accuracy"] = (logits.argmax(-1) == y).double().mean()
    got = check.result.baselines
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(float(value), rel=1e-6, abs=1e-9), name
    logged = logger.calls[0][0]
    assert {k: logged[f"resque/baseline/{k}"] for k in got} == got


def test_baselines_off_and_skipped_for_predicted_labels(tmp_path: Path) -> None:
    x, y = digits(100)
    off = RESQUECheck(digits_loader(x, y), layer="net.block2", baselines=False, progress_bar=False)
    predicted = RESQUECheck(
        digits_loader(x.flip(-1), y),
        layer="net.block2",
        original_dataloader=digits_loader(x, y),
        num_classes=10,
        label_source="prediction",
        progress_bar=False,
        log_prefix="pred",
    )
    logger = RecordingLogger()
    trainer_for(tmp_path, [off, predicted], logger=logger).fit(Classifier(), digits_loader(x, y))
    assert off.result.baselines == {} and predicted.result.baselines == {}
    assert not [k for call, _ in logger.calls for k in call if "/baseline/" in k]
