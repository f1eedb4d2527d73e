"""AdditiveFineTuning under real Lightning fits: frozen base, side-only checkpoints, relabelling, DDP."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reuse._warnings import LightningReuseWarning
from lightning_reuse.modules.additive import AdditiveFineTuning
from lightning_reuse.nn.side_network import SideMLP

pytestmark = pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*")


def bn_base(seed: int = 0) -> nn.Module:
    """A base with BatchNorm and dropout: a wrongly trained-mode base would change its statistics."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    net.train()
    with torch.no_grad():
        net(torch.randn(32, 6))
    return net.eval().requires_grad_(False)


def data(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def trainer(tmp_path: Path, epochs: int = 2, **kwargs) -> pl.Trainer:
    kwargs.setdefault("logger", False)
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


class ModeRecorder(pl.Callback):
    """Record the base's mode at every training batch (asserted after the fit)."""

    def __init__(self) -> None:
        self.modes: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.modes += [m.training for m in pl_module.model.base.modules()]


def test_fit_leaves_base_bit_unchanged_and_in_eval_mode(tmp_path: Path) -> None:
    base = bn_base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    module = AdditiveFineTuning(base, SideMLP(6, 3, width=8, depth=3), lr=1e-2, weight_decay=1e-2)
    side_before = module.model.side.out.weight.clone()
    x, y = data()
    assert torch.equal(module(x), base(x))  # exactly the base at step 0
    recorder = ModeRecorder()
    t = trainer(tmp_path, epochs=3, callbacks=[recorder], enable_checkpointing=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    t.fit(module, loader, DataLoader(TensorDataset(x, y), batch_size=16))
    after = base.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights, running stats, counters
    assert recorder.modes and not any(recorder.modes)  # eval mode during every training step
    assert not any(m.training for m in base.modules())
    assert not torch.equal(module.model.side.out.weight, side_before)  # the side network did train
    assert {"train_loss", "val_loss", "val_acc"} <= set(t.callback_metrics)


def test_checkpoint_holds_the_side_only_and_reloads_with_the_base(tmp_path: Path) -> None:
    base = bn_base()
    module = AdditiveFineTuning(base, SideMLP(6, 3, width=4), lr=5e-2, output_penalty=0.1)
    x, y = data()
    t = trainer(tmp_path)
    t.fit(module, DataLoader(TensorDataset(x, y), batch_size=16))
    path = t.checkpoint_callback.best_model_path
    ckpt = torch.load(path, weights_only=False)
    assert set(ckpt["state_dict"]) == {f"model.side.{k}" for k in module.model.side.state_dict()}
    info = ckpt["additive_fine_tuning"]
    assert info["layer"] is None and info["side_config"]["width"] == [4]
    assert ckpt["hyper_parameters"]["side"]["kind"] == "mlp"
    reloaded = AdditiveFineTuning.load_from_checkpoint(path, base=bn_base())  # same weights, new object
    module.eval()
    assert torch.equal(reloaded(x), module(x))
    assert reloaded.output_penalty == 0.1
    with pytest.raises(ValueError, match="not the base this side network was trained on"):
        AdditiveFineTuning.load_from_checkpoint(path, base=bn_base(seed=1))
    loose = AdditiveFineTuning.load_from_checkpoint(path, base=bn_base(seed=1), check_base=False)
    assert torch.equal(loose.model.side.out.weight, module.model.side.out.weight)
    with pytest.raises(ValueError, match="not written by AdditiveFineTuning"):
        module.on_load_checkpoint({"state_dict": {}})


def test_resume_from_side_only_checkpoint(tmp_path: Path) -> None:
    base = bn_base()
    x, y = data()

    def side(seed: int) -> SideMLP:
        torch.manual_seed(seed)
        return SideMLP(6, 3, width=4)

    straight = AdditiveFineTuning(base, side(0))  # the uninterrupted 2-epoch run
    trainer(tmp_path / "straight", epochs=2).fit(straight, DataLoader(TensorDataset(x, y), batch_size=16))
    t = trainer(tmp_path, epochs=1)
    t.fit(AdditiveFineTuning(base, side(0)), DataLoader(TensorDataset(x, y), batch_size=16))
    path = t.checkpoint_callback.best_model_path
    resumed = AdditiveFineTuning(base, side(7))  # other initial weights: the checkpoint must replace them
    t2 = trainer(tmp_path / "resume", epochs=2)
    t2.fit(resumed, DataLoader(TensorDataset(x, y), batch_size=16), ckpt_path=path)
    assert t2.current_epoch == 2
    saved = torch.load(path, weights_only=False)["state_dict"]
    after = resumed.model.side.state_dict()
    assert any(not torch.equal(after[k], saved[f"model.side.{k}"]) for k in after)  # epoch 2 did train
    # side weights and optimizer state came back from the checkpoint: equal to the uninterrupted run
    for key, value in straight.model.side.state_dict().items():
        assert torch.allclose(after[key], value, rtol=0, atol=1e-6), key


def test_relabels_n_samples_and_keeps_the_others(tmp_path: Path) -> None:
    base = bn_base()
    x, _ = data(64, seed=3)
    pred = base(x).argmax(-1)
    changed = torch.arange(4)
    target = pred.clone()
    target[changed] = (pred[changed] + 1) % 3
    module = AdditiveFineTuning(base, SideMLP(6, 3, width=32), lr=3e-2, output_penalty=1.0)
    t = trainer(tmp_path, epochs=150, enable_checkpointing=False)
    t.fit(module, DataLoader(TensorDataset(x, target), batch_size=64))
    module.eval()
    new = module(x).argmax(-1)
    assert torch.equal(new[changed], target[changed])  # the N labels flipped
    assert torch.equal(new[4:], pred[4:])  # every other training prediction kept


def test_trainable_base_warns_and_unfreezing_later_is_refused(tmp_path: Path) -> None:
    base = bn_base().requires_grad_(True)
    with pytest.warns(LightningReuseWarning, match="froze them in place"):
        module = AdditiveFineTuning(base, SideMLP(6, 3, width=2))
    base[0].weight.requires_grad_(True)
    x, y = data(16)
    with pytest.raises(RuntimeError, match="unfroze it after wrapping"):
        trainer(tmp_path, epochs=1).fit(module, DataLoader(TensorDataset(x, y), batch_size=16))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "hinge"}, "`loss` must be"),
        ({"lr": 0.0}, "`lr` must be > 0"),
        ({"output_penalty": -1.0}, "must be >= 0"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdditiveFineTuning(bn_base(), SideMLP(6, 3, width=2), **kwargs)


def test_optimizer_factory_gets_one_unanchored_side_group() -> None:
    seen: list = []

    def factory(groups):
        seen.extend(groups)
        return torch.optim.SGD(groups, lr=0.1)

    module = AdditiveFineTuning(bn_base(), SideMLP(6, 3, width=2), optimizer=factory, loss="mse")
    opt = module.configure_optimizers()
    assert len(seen) == 1 and seen[0]["name"] == "side" and seen[0]["anchor"] is None
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in module.model.side.parameters()}


@pytest.mark.ddp
@pytest.mark.slow  # ~18 s on an idle 2-core machine, more under load
def test_ddp_fit_keeps_base_and_syncs_side(ddp_runner) -> None:
    result = ddp_runner(
        """
import lightning.pytorch as pl
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from lightning_reuse.modules.additive import AdditiveFineTuning
from lightning_reuse.nn.side_network import SideMLP

torch.manual_seed(0)
base = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).eval().requires_grad_(False)
before = {k: v.clone() for k, v in base.state_dict().items()}
module = AdditiveFineTuning(base, SideMLP(6, 3, width=8), lr=1e-2)
x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ["LIGHTNING_REUSE_TEST_NPROCS"]), strategy="ddp",
                     max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)
trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8))
torch.save({"side": {k: v.clone() for k, v in module.model.side.state_dict().items()},
            "same_base": all(torch.equal(before[k], v) for k, v in base.state_dict().items()),
            "eval": not any(m.training for m in base.modules())}, f"rank{trainer.global_rank}.pt")
"""
    )
    r0 = torch.load(result.workdir / "rank0.pt")
    r1 = torch.load(result.workdir / "rank1.pt")
    assert r0["same_base"] and r1["same_base"] and r0["eval"] and r1["eval"]
    assert all(torch.equal(r0["side"][k], r1["side"][k]) for k in r0["side"])
    assert r0["side"]["out.weight"].abs().sum() > 0


def _fit_side(tmp_path: Path, optimizer, name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    module = AdditiveFineTuning(bn_base(), SideMLP(6, 3, width=4), optimizer=optimizer)
    x, y = data()
    trainer(tmp_path / name, enable_checkpointing=False).fit(
        module, DataLoader(TensorDataset(x, y), batch_size=16)
    )
    return {k: v.clone() for k, v in module.model.side.state_dict().items()}


def test_ftp_must_exclude_the_side_network(tmp_path: Path) -> None:
    from lightning_reuse.optim.ftp import FTP

    plain = _fit_side(tmp_path, lambda groups: torch.optim.AdamW(groups, lr=1e-2), "plain")
    projected: list[bool] = []

    def ftp_excluding_side(groups):
        opt = FTP(torch.optim.AdamW(groups, lr=1e-2), exclude=groups[0]["params"])
        projected.extend(opt.is_projected(p) for p in groups[0]["params"])
        return opt

    with_ftp = _fit_side(tmp_path, ftp_excluding_side, "ftp")
    assert projected and not any(projected)
    assert all(torch.equal(plain[k], with_ftp[k]) for k in plain)  # no projection: the plain AdamW path
    module = AdditiveFineTuning(
        bn_base(), SideMLP(6, 3, width=4), optimizer=lambda groups: FTP(torch.optim.AdamW(groups, lr=1e-2))
    )
    with pytest.raises(ValueError, match="side network has no pre-trained values"):
        module.configure_optimizers()


def test_energy_monitor_measures_an_additive_fit(tmp_path: Path) -> None:
    from lightning_reuse.callbacks.energy_monitor import EnergyMonitor

    monitor = EnergyMonitor(country_iso_code="DEU", measure_power_secs=0.5)  # real codecarbon, offline
    module = AdditiveFineTuning(bn_base(), SideMLP(6, 3, width=4))
    x, y = data()
    trainer(tmp_path, epochs=2, callbacks=[monitor], enable_checkpointing=False).fit(
        module, DataLoader(TensorDataset(x, y), batch_size=16)
    )
    assert len(monitor.epochs) == 2 and monitor.total.energy_wh > 0 and monitor.total.duration_s > 0


@pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered.*")
def test_ignored_labels_only_feel_the_output_penalty() -> None:
    from lightning_reuse.modules.additive import IGNORE_INDEX

    module = AdditiveFineTuning(bn_base(), SideMLP(6, 3, width=4), output_penalty=2.0)
    nn.init.normal_(module.model.side.out.weight)
    x, _ = data(8)
    y = torch.full((8,), IGNORE_INDEX)
    base_out, delta = module.model.parts(x)
    loss = module._shared_step((x, y), "train")
    assert torch.allclose(loss, 2.0 * delta.pow(2).mean())
    y[0] = 1
    expected = nn.functional.cross_entropy((base_out + delta)[:1], y[:1]) + 2.0 * delta.pow(2).mean()
    assert torch.allclose(module._shared_step((x, y), "train"), expected)


class TokenBase(nn.Module):
    """A tiny token classifier: embedding, mean over tokens, linear head (inputs are integer token ids)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(1))


def token_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    ids, y = torch.randint(0, 20, (24, 5), generator=g), torch.randint(0, 3, (24,), generator=g)
    return DataLoader(TensorDataset(ids, y), batch_size=8)


def test_token_ids_without_a_layer_say_the_side_network_needs_a_float_feature(tmp_path: Path) -> None:
    base = TokenBase().requires_grad_(False)
    module = AdditiveFineTuning(base, SideMLP(5, 3, width=4))  # layer=None: the side reads the token ids
    with pytest.raises(
        TypeError,
        match=r"reads the input, a torch.int64 tensor.*needs a float feature.*"
        r"HINT: pass `layer=`.*layer='embed'",
    ):
        trainer(tmp_path, epochs=1).fit(module, token_loader())


def test_token_ids_with_an_embedding_layer_train(tmp_path: Path) -> None:
    base = TokenBase().requires_grad_(False)
    module = AdditiveFineTuning(base, SideMLP(5 * 8, 3, width=4), layer="embed")
    t = trainer(tmp_path, epochs=1)
    t.fit(module, token_loader())
    assert t.global_step == 3
