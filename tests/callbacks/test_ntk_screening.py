"""NTKScreening in real Lightning fits: decisions, logging, untouched model state, refusals."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reuse.callbacks.ntk_screening import NTKScreening, NTKScreeningWarning
from lightning_reuse.functional import ScreeningConfig
from lightning_reuse.functional.ntk_scores import ScreeningThresholds
from lightning_reuse.nn.label_mapping import FrequencyLabelMapping
from lightning_reuse.nn.prompts import PaddingPrompt
from lightning_reuse.nn.reprogrammed import ReprogrammedModel
from lightning_reuse.samples.models import SmallCNN

PASS_ALL = ScreeningThresholds(ntk_accuracy_fail=None, ntk_accuracy_warn=None)  # no rule: always PASS
FAIL_ALL = ScreeningThresholds(min_confidence=1e9)


class Reprog(pl.LightningModule):
    def __init__(self, source: nn.Module | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        source = source if source is not None else SmallCNN(width=4)
        self.model = ReprogrammedModel(
            source, PaddingPrompt((1, 6, 6), (1, 8, 8)), FrequencyLabelMapping(10, 3)
        )

    def training_step(self, batch, _):
        return nn.functional.cross_entropy(self.model(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.trainable_parameters(), lr=0.01)


def loader(n: int = 60) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(n, 1, 6, 6, generator=g), torch.arange(n) % 3)
    return DataLoader(data, batch_size=20, shuffle=True)  # a shuffled loader draws from the global RNG


def trainer(tmp_path: Path, callbacks: list, **kw) -> pl.Trainer:
    kw.setdefault("logger", False)
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kw,
    )


class Snapshot(Callback):
    """Records parameters, grads, RNG states and modes in on_train_start (placed around the screening)."""

    def __init__(self, set_grads: bool = False) -> None:
        self.set_grads = set_grads
        self.state: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        if self.set_grads:
            for p in pl_module.parameters():
                if p.requires_grad:
                    p.grad = torch.full_like(p, 0.25)
        self.state = {
            "params": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            "grads": {k: None if p.grad is None else p.grad.clone() for k, p in pl_module.named_parameters()},
            "requires_grad": {k: p.requires_grad for k, p in pl_module.named_parameters()},
            "torch_rng": torch.get_rng_state(),
            "np_rng": np.random.get_state()[1].copy(),  # noqa: NPY002
            "py_rng": random.getstate(),
            "modes": {k: m.training for k, m in pl_module.named_modules()},
        }


def test_screening_leaves_model_rng_and_modes_untouched(tmp_path: Path) -> None:
    before, after = Snapshot(set_grads=True), Snapshot()
    screening = NTKScreening(num_samples=30, plot=False, thresholds=PASS_ALL)
    trainer(tmp_path, [before, screening, after], max_steps=1).fit(Reprog(), loader())
    assert screening.scores is not None and screening.scores.n == 30
    b, a = before.state, after.state
    assert b["params"].keys() == a["params"].keys()
    assert all(torch.equal(b["params"][k], a["params"][k]) for k in b["params"])
    assert all(
        (b["grads"][k] is None and a["grads"][k] is None) or torch.equal(b["grads"][k], a["grads"][k])
        for k in b["grads"]
    )
    assert b["grads"]["model.transform.theta"] is not None
    assert b["requires_grad"] == a["requires_grad"]
    assert torch.equal(b["torch_rng"], a["torch_rng"])
    assert np.array_equal(b["np_rng"], a["np_rng"]) and b["py_rng"] == a["py_rng"]
    assert b["modes"] == a["modes"] and b["modes"]["model.transform"] is True
    assert b["modes"]["model.source"] is False


class SeenBatches(Reprog):
    """Records every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, i):
        self.seen.append(batch[0].clone())
        return super().training_step(batch, i)


@pytest.mark.parametrize(
    ("own_generator", "workers"),
    [(True, 0), (False, 0), (True, 1)],
    ids=["loader-generator", "global-rng", "persistent-workers"],
)
def test_screening_leaves_the_training_batches_unchanged(
    tmp_path: Path, own_generator: bool, workers: int
) -> None:
    data = loader(100).dataset  # 5 batches of 20: the screening reads 2 of them (max_pool 4 x 10)
    runs = []
    for callbacks in ([], [NTKScreening(num_samples=10, plot=False, thresholds=PASS_ALL)]):
        generator = torch.Generator().manual_seed(0) if own_generator else None
        train = DataLoader(
            data,
            batch_size=20,
            shuffle=True,
            generator=generator,
            num_workers=workers,
            persistent_workers=workers > 0,
        )
        module = SeenBatches()
        torch.manual_seed(1)
        trainer(tmp_path, callbacks).fit(module, train)  # one whole epoch
        runs.append(module.seen)
    assert len(runs[0]) == len(runs[1]) == 5
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))


def test_works_with_model_reprogramming_module(tmp_path: Path) -> None:
    from lightning_reuse.modules.reprogramming import ModelReprogramming
    from lightning_reuse.nn.label_mapping import IterativeLabelMapping

    torch.manual_seed(0)
    module = ModelReprogramming(
        SmallCNN(width=4), PaddingPrompt((1, 6, 6), (1, 8, 8)), IterativeLabelMapping(10, 3)
    )
    screening = NTKScreening(num_samples=30, plot=False, thresholds=PASS_ALL)
    trainer(tmp_path, [screening], max_steps=2).fit(module, loader())
    assert screening.scores.n == 30 and screening.scores.num_classes == 3
    assert module.remap_history  # the module's own ILM re-mapping still ran after the screening


def test_fail_stops_the_fit_before_the_first_step(tmp_path: Path) -> None:
    screening = NTKScreening(num_samples=30, on_fail="stop", plot=False, thresholds=FAIL_ALL)
    t = trainer(tmp_path, [screening])
    with pytest.warns(NTKScreeningWarning, match="stopping the fit.*near-uniform"):
        t.fit(Reprog(), loader())
    assert screening.scores.decision == "FAIL"
    assert t.global_step == 0


def test_fail_with_warn_keeps_training(tmp_path: Path) -> None:
    screening = NTKScreening(num_samples=30, on_fail="warn", plot=False, thresholds=FAIL_ALL)
    t = trainer(tmp_path, [screening])
    with pytest.warns(NTKScreeningWarning, match="training continues"):
        t.fit(Reprog(), loader())
    assert t.global_step == 3


def test_logs_scores_and_spectrum_plot_to_csv(tmp_path: Path) -> None:
    screening = NTKScreening(num_samples=45, thresholds=PASS_ALL, top_k=16)
    t = trainer(tmp_path, [screening], logger=CSVLogger(tmp_path), max_steps=1)
    t.fit(Reprog(), loader())
    rows = list(csv.DictReader(open(Path(t.logger.log_dir) / "metrics.csv")))
    logged = {k: float(v) for r in rows for k, v in r.items() if k.startswith("ntk/") and v != ""}
    assert logged["ntk/rho"] == pytest.approx(screening.scores.rho, rel=1e-6)
    assert {"ntk/e_tau", "ntk/r_eff", "ntk/lam_bar", "ntk/guard_confidence", "ntk/guard_nmi"} <= logged.keys()
    assert logged["ntk/decision"] == 0.0
    assert len(screening.scores.eigenvalues) == 16
    assert screening.plot_path is not None and screening.plot_path.stat().st_size > 1000


def test_wandb_line_plot_of_the_spectrum(tmp_path: Path, wandb_offline) -> None:
    from tests.helpers.wandb_read import find_offline_run_dirs, read_offline_run

    screening = NTKScreening(num_samples=30, thresholds=PASS_ALL, top_k=8)
    trainer(tmp_path, [screening], logger=wandb_offline(name="ntk"), max_steps=1).fit(Reprog(), loader())
    import wandb

    wandb.finish()
    run = read_offline_run(find_offline_run_dirs(tmp_path)[0])
    assert "ntk/rho" in run["keys"]
    assert any(k.startswith("ntk/spectrum") for k in run["keys"])


def test_energy_window_and_state_dict_round_trip(tmp_path: Path) -> None:
    from lightning_reuse.callbacks.energy_monitor import EnergyMonitor

    monitor = EnergyMonitor(backend="simulated")
    screening = NTKScreening(num_samples=30, plot=False, thresholds=PASS_ALL)
    trainer(tmp_path, [monitor, screening], max_steps=1).fit(Reprog(), loader())
    assert "ntk-screening" in monitor.windows and screening.energy is not None
    restored = NTKScreening(num_samples=30, plot=False)
    restored.load_state_dict(screening.state_dict())
    assert restored.scores == screening.scores


def test_refuses_train_mode_batchnorm_with_a_fix(tmp_path: Path) -> None:
    class Holder(nn.Module):  # no eval-mode guarantee for the source, unlike ReprogrammedModel
        def __init__(self) -> None:
            super().__init__()
            self.source = nn.Sequential(
                nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 10)
            )
            self.transform = PaddingPrompt((1, 6, 6), (1, 8, 8))
            self.mapping = FrequencyLabelMapping(10, 3)

    class Module(Reprog):
        def __init__(self) -> None:
            super().__init__()
            self.model = Holder()  # type: ignore[assignment]

        def training_step(self, batch, _):
            m = self.model
            return nn.functional.cross_entropy(m.mapping(m.source(m.transform(batch[0]))), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.model.transform.parameters(), lr=0.01)

    with pytest.raises(ValueError, match=r"BatchNorm2d.*\.eval\(\)"):
        trainer(tmp_path, [NTKScreening(num_samples=30, plot=False)]).fit(Module(), loader())


def test_constructor_and_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="`on_fail` must be one of"):
        NTKScreening(on_fail="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`num_samples` must be an int >= 1"):
        NTKScreening(num_samples=0)

    class Plain(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(36, 3)

        def training_step(self, batch, _):
            return nn.functional.cross_entropy(self.lin(batch[0].flatten(1)), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(TypeError, match="needs a reprogrammed model"):
        trainer(tmp_path, [NTKScreening(plot=False)]).fit(Plain(), loader())


@pytest.mark.ddp
@pytest.mark.slow  # ~15-20 s idle (two processes), more on a loaded machine
def test_ddp_ranks_share_rank_zero_decision_and_stop_together(ddp_runner) -> None:
    result = ddp_runner(
        """
import warnings
import lightning.pytorch as pl
from torch.utils.data import DataLoader, TensorDataset
from lightning_reuse.callbacks.ntk_screening import NTKScreening
from lightning_reuse.functional.ntk_scores import ScreeningThresholds
from lightning_reuse.nn.label_mapping import FrequencyLabelMapping
from lightning_reuse.nn.prompts import PaddingPrompt
from lightning_reuse.nn.reprogrammed import ReprogrammedModel
from lightning_reuse.samples.models import SmallCNN

class Reprog(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = ReprogrammedModel(SmallCNN(width=4), PaddingPrompt((1, 6, 6), (1, 8, 8)),
                                       FrequencyLabelMapping(10, 3))
    def training_step(self, batch, _):
        return torch.nn.functional.cross_entropy(self.model(batch[0]), batch[1])
    def configure_optimizers(self):
        return torch.optim.Adam(self.model.trainable_parameters(), lr=0.01)

g = torch.Generator().manual_seed(0)
data = TensorDataset(torch.rand(80, 1, 6, 6, generator=g), torch.arange(80) % 3)
screening = NTKScreening(num_samples=30, on_fail="stop", plot=False, thresholds=ScreeningThresholds(min_confidence=1e9))
trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ["LIGHTNING_REUSE_TEST_NPROCS"]), strategy="ddp",
                     max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[screening])
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    trainer.fit(Reprog(), DataLoader(data, batch_size=10))
torch.save({"step": trainer.global_step, "scores": screening.scores.as_dict()}, f"rank{trainer.global_rank}.pt")
"""
    )
    r0 = torch.load(result.workdir / "rank0.pt")
    r1 = torch.load(result.workdir / "rank1.pt")
    assert r0["scores"] == r1["scores"] and r0["scores"]["decision"] == "FAIL"
    assert r0["step"] == r1["step"] == 0


def test_keywords_and_config_give_identical_scores(tmp_path: Path) -> None:
    same = {"num_samples": 30, "top_k": 8, "num_permutations": 4, "seed": 3, "thresholds": PASS_ALL}
    by_keywords = NTKScreening(plot=False, **same)
    by_config = NTKScreening(plot=False, config=ScreeningConfig(**same))
    assert by_keywords.config == by_config.config
    for screening in (by_keywords, by_config):
        trainer(tmp_path, [screening], max_steps=1).fit(Reprog(), loader())
    assert by_keywords.scores == by_config.scores and by_keywords.scores.n == 30


def test_keywords_mirror_the_config_fields_and_defaults() -> None:
    import dataclasses
    import inspect

    params = inspect.signature(NTKScreening).parameters
    for f in dataclasses.fields(ScreeningConfig):
        assert f.name in params, f"NTKScreening lacks the screening option {f.name!r}"
        if f.name != "thresholds":  # None there: the config's default rule
            assert params[f.name].default == f.default, f.name
    assert NTKScreening().config == ScreeningConfig()


def test_config_with_keywords_and_invalid_options_are_refused() -> None:
    with pytest.raises(
        ValueError, match=r"NTKScreening got both `config=` and the options \['num_samples'\]"
    ):
        NTKScreening(num_samples=30, config=ScreeningConfig())
    with pytest.raises(ValueError, match=r"`sketch` must be one of .*got 'fft'\. HINT:"):
        NTKScreening(sketch="fft")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`on_fail` must be one of .*HINT:"):
        NTKScreening(on_fail="explode", config=ScreeningConfig())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`max_pool` must be an int >= 1 or None, got 0\. HINT:"):
        NTKScreening(max_pool=0)


def test_unlabeled_training_batches_are_refused_with_a_fix(tmp_path: Path) -> None:
    class Unlabeled(Reprog):
        def training_step(self, batch, _):
            return self.model(batch[0]).sum()

    data = DataLoader(TensorDataset(torch.rand(20, 1, 6, 6)), batch_size=10)
    with pytest.raises(ValueError, match=r"NTKScreening needs labelled batches.*HINT:"):
        trainer(tmp_path, [NTKScreening(num_samples=10, plot=False)]).fit(Unlabeled(), data)


# --- degenerate data: a clear error before training, or FAIL with the reason; never PASS -------------------
def labelled(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=20)


@pytest.mark.parametrize(
    ("n", "labels", "reason"),
    [(1, [2], "only 1 target sample"), (30, [1] * 30, "only one class present")],
    ids=["one-sample", "one-class-present"],
)
def test_degenerate_training_data_fails_with_the_reason(
    tmp_path: Path, n: int, labels: list[int], reason: str
) -> None:
    screening = NTKScreening(num_samples=30, on_fail="stop", plot=True, thresholds=PASS_ALL)
    t = trainer(tmp_path, [screening])
    x = torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    with pytest.warns(NTKScreeningWarning, match=f"cannot vouch.*stopping the fit.*{reason}.*HINT: train on"):
        t.fit(Reprog(), labelled(x, torch.tensor(labels)))
    assert screening.scores.decision == "FAIL" and screening.scores.degenerate
    assert t.global_step == 0 and screening.plot_path.exists()


@pytest.mark.parametrize(
    ("labels", "message"),
    [(torch.arange(60) % 4, r"range \[0, 3\]"), (torch.arange(60) % 3 - 1, r"range \[-1, 1\]")],
    ids=["above-range", "negative"],
)
def test_labels_out_of_range_are_refused_before_the_first_step(
    tmp_path: Path, labels: torch.Tensor, message: str
) -> None:
    t = trainer(tmp_path, [NTKScreening(num_samples=30, plot=False)])
    x = torch.rand(60, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=rf"labels must lie in \[0, 3\).*{message}.*HINT: relabel"):
        t.fit(Reprog(), labelled(x, labels))
    assert t.global_step == 0


def test_one_class_label_mapping_is_refused_with_a_fix(tmp_path: Path) -> None:
    class OneClass(Reprog):
        def __init__(self) -> None:
            super().__init__()
            self.model = ReprogrammedModel(
                SmallCNN(width=4), PaddingPrompt((1, 6, 6), (1, 8, 8)), FrequencyLabelMapping(10, 1)
            )

    t = trainer(tmp_path, [NTKScreening(num_samples=30, plot=False)])
    x = torch.rand(60, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"1 target class, expected at least 2.*HINT:"):
        t.fit(OneClass(), labelled(x, torch.zeros(60, dtype=torch.long)))


def test_token_sequences_are_refused_naming_what_is_supported(tmp_path: Path) -> None:
    tokens = torch.randint(0, 50, (60, 1, 6, 6), generator=torch.Generator().manual_seed(0))
    t = trainer(tmp_path, [NTKScreening(num_samples=30, plot=False)])
    with pytest.raises(
        TypeError, match=r"image inputs only.*torch.int64.*Token-sequence sources.*not supported"
    ):
        t.fit(Reprog(), labelled(tokens, torch.arange(60) % 3))
    # without the screening, the prompt itself refuses token ids instead of adding a prompt to them
    with pytest.raises(TypeError, match=r"PaddingPrompt expects float target images.*token ids.*HINT:"):
        Reprog().model(tokens[:2])


def test_baselines_are_reported_beside_the_ntk_score_from_the_same_samples(tmp_path: Path) -> None:
    """The zero-step accuracy of the frequency label mapping, the probe and LogME on the screened samples'
    source logits, recomputed here from an independent forward pass, equal what the screening reports; the
    callback logs exactly those."""
    from lightning_reuse.functional import (
        linear_probe_accuracy,
        logme,
        screen_reprogramming,
        stratified_subset,
    )
    from lightning_reuse.nn import count_matrix, greedy_one_to_one

    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(60, 1, 6, 6, generator=g), torch.arange(60) % 3
    model = Reprog().model.eval()
    scores = screen_reprogramming(model, x, y, num_samples=45, top_k=8, thresholds=PASS_ALL)
    idx = stratified_subset(y, 45, 0)
    with torch.no_grad():
        src = model.source(model.transform(x[idx])).double()
    flm = greedy_one_to_one(count_matrix(src.argmax(-1), y[idx], src.shape[1], 3))  # fitted on these samples
    got = scores.baselines
    assert set(got) == {"zero_step_accuracy", "linear_probe", "logme"}
    assert got["zero_step_accuracy"] == pytest.approx(
        float((src[:, flm].argmax(-1) == y[idx]).double().mean())
    )
    assert got["linear_probe"] == pytest.approx(float(linear_probe_accuracy(src, y[idx], num_classes=3)))
    assert got["logme"] == pytest.approx(float(logme(src, y[idx], num_classes=3)), rel=1e-6)

    screening = NTKScreening(num_samples=45, thresholds=PASS_ALL, top_k=8, plot=False, progress_bar=False)
    t = trainer(tmp_path, [screening], logger=CSVLogger(tmp_path), max_steps=1)
    t.fit(Reprog(), loader())
    rows = list(csv.DictReader(open(Path(t.logger.log_dir) / "metrics.csv")))
    logged = {k: float(v) for r in rows for k, v in r.items() if k.startswith("ntk/baseline/") and v != ""}
    assert set(screening.scores.baselines) == set(got)
    assert logged == pytest.approx({f"ntk/baseline/{k}": v for k, v in screening.scores.baselines.items()})
    off = NTKScreening(
        num_samples=45, thresholds=PASS_ALL, top_k=8, plot=False, progress_bar=False, baselines=False
    )
    trainer(tmp_path / "off", [off], max_steps=1).fit(Reprog(), loader())
    assert off.scores.baselines == {}
