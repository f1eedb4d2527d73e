"""FTP inside Lightning: checkpoint resume, LR schedulers, LightningCLI, AMP and real 2-process DDP."""

from __future__ import annotations

import textwrap
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reuse.optim import FTP, FTPSGD, FTPAdamW, configure_ftp
from tests.optim.test_ftp import ftp_state


def tiny_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential()
    net.add_module("body", nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh()))
    net.add_module("head", nn.Linear(8, 3))
    return net


def loader(n: int = 32, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


class FTPModule(pl.LightningModule):
    def __init__(self, seed: int = 0, scheduler: bool = True) -> None:
        super().__init__()
        self.net = tiny_net(seed)
        self.scheduler = scheduler

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = configure_ftp(self.net, torch.optim.SGD, lr=0.2, momentum=0.9, nesterov=True, k=0.5)
        if not self.scheduler:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.7)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def trainer(tmp_path: Path, max_epochs: int, **kwargs) -> pl.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        **kwargs,
    )


@pytest.mark.parametrize("map_location_cpu", [False, True], ids=["ckpt", "ckpt-map_location-cpu"])
def test_resume_from_model_checkpoint_is_bit_identical(tmp_path: Path, map_location_cpu: bool) -> None:
    full = FTPModule()
    trainer(tmp_path / "full", 5).fit(full, loader())

    part = FTPModule()
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path / "part", 2, enable_checkpointing=True, callbacks=[ckpt_cb]).fit(part, loader())
    ckpt_path = tmp_path / "ckpt" / "last.ckpt"
    if map_location_cpu:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        assert ckpt["optimizer_states"][0]["param_groups"][0]["ftp_step"] == 8
        ckpt_path = tmp_path / "cpu.ckpt"
        torch.save(ckpt, ckpt_path)

    resumed = FTPModule(seed=99)  # another init: anchors and weights must come from the checkpoint
    t = trainer(tmp_path / "resumed", 5)
    t.fit(resumed, loader(), ckpt_path=str(ckpt_path))
    opt = t.optimizers[0]
    assert isinstance(opt, FTP) and opt.param_groups[0]["ftp_step"] == 20
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * 0.7 ** (20 // 3))  # the scheduler resumed too
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    anchor = ftp_state(opt, resumed.net.body[0].weight)["anchor"]
    assert torch.equal(anchor, tiny_net(0).body[0].weight)  # the original anchor, not the resumed init


def _fit_with(tmp_path: Path, clip: float | None) -> tuple[FTPModule, pl.Trainer]:
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    model = FTPModule()
    t = pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=1,
        gradient_clip_val=clip,
        logger=CSVLogger(tmp_path),
        callbacks=[LearningRateMonitor(logging_interval="step")],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    t.fit(model, loader())
    return model, t


def test_gradient_clipping_and_lr_monitor_see_the_shared_groups(tmp_path: Path) -> None:
    clipped, t = _fit_with(tmp_path / "clip", 1e-3)
    free, _ = _fit_with(tmp_path / "free", None)
    rows = (Path(t.logger.log_dir) / "metrics.csv").read_text().splitlines()
    assert "lr-FTP" in rows[0]  # LearningRateMonitor reads the shared param_groups
    lrs = [float(r.split(",")[rows[0].split(",").index("lr-FTP")]) for r in rows[1:]]
    assert lrs[0] == pytest.approx(0.2) and lrs[-1] == pytest.approx(0.2 * 0.7)  # StepLR after 3 steps
    head_move_clipped = (clipped.net.head.weight - tiny_net(0).head.weight).abs().max()
    head_move_free = (free.net.head.weight - tiny_net(0).head.weight).abs().max()
    assert head_move_clipped < head_move_free / 10  # clipping acted on the gradients FTP's base used


CLI_MODULE = """
import torch
import lightning.pytorch as pl
from lightning.pytorch.cli import OptimizerCallable


class CLIModule(pl.LightningModule):
    def __init__(self, optimizer: OptimizerCallable = torch.optim.SGD) -> None:
        super().__init__()
        self.optimizer = optimizer
        torch.manual_seed(0)
        self.net = torch.nn.Sequential()
        self.net.add_module("body", torch.nn.Linear(6, 8))
        self.net.add_module("head", torch.nn.Linear(8, 3))

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def train_dataloader(self):
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)

    def configure_optimizers(self):
        return self.optimizer(self.net.named_parameters())
"""


def test_lightning_cli_yaml_builds_ftp_adamw_with_head_excluded(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip(
        "jsonargparse", reason="LightningCLI needs jsonargparse (lightning's extra), not installed"
    )
    from lightning.pytorch.cli import LightningCLI

    (tmp_path / "cli_module.py").write_text(CLI_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    from cli_module import CLIModule  # type: ignore[import-not-found]

    config = tmp_path / "ftp.yaml"
    config.write_text(
        textwrap.dedent(
            """
            trainer: {max_epochs: 1, accelerator: cpu, logger: false, enable_checkpointing: false,
                      enable_progress_bar: false, enable_model_summary: false}
            model:
              optimizer:
                class_path: lightning_reuse.optim.FTPAdamW
                init_args: {lr: 0.001, weight_decay: 0.0, k: 0.5, exclude: head}
            """
        )
    )
    cli = LightningCLI(CLIModule, args=["fit", "--config", str(config)], save_config_callback=None)
    opt = cli.trainer.optimizers[0]
    group = opt.param_groups[0]
    assert isinstance(opt, FTPAdamW) and group["ftp_k"] == 0.5 and group["ftp_step"] == 2
    net = cli.model.net
    assert opt.is_projected(net.body.weight) and not opt.is_projected(net.head.weight)


def test_presets_validate_like_torch() -> None:
    net = tiny_net(0)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        FTPSGD(net.parameters(), lr=-1.0)
    opt = FTPSGD(net.named_parameters(), lr=0.1, exclude=["head"])
    assert opt.base_optimizer.defaults["nesterov"] and not opt.is_projected(net.head.bias)


def test_presets_route_implementation_to_ftp_and_the_base_kernel_separately() -> None:
    net = tiny_net(0)
    opt = FTPAdamW(net.named_parameters(), lr=1e-3, exclude="head", implementation="fused")
    assert opt.implementation == "fused" and opt._fused_wanted()
    assert not opt.base_optimizer.defaults["fused"]  # torch's fused AdamW kernel untouched (CPU here)
    opt = FTPAdamW(
        net.named_parameters(), lr=1e-3, exclude="head", implementation="foreach", adamw_fused=True
    )
    assert (
        opt.implementation == "foreach" and not opt._fused_wanted() and opt.base_optimizer.defaults["fused"]
    )
    opt = FTPSGD(net.named_parameters(), lr=0.1, exclude="head", implementation="fused", sgd_fused=True)
    assert opt.implementation == "fused" and opt.base_optimizer.defaults["fused"]
    loss = net(torch.randn(4, 6)).sum()
    loss.backward()
    opt.step()  # a first step creates FTP's state (per-tensor path)
    assert opt.param_groups[0]["ftp_step"] == 1
    opt.zero_grad()
    net(torch.randn(4, 6)).sum().backward()
    opt.step()  # the FTP fused fallback over torch's fused SGD step runs on CPU
    assert opt._fused_engine.layout is not None


# --- AMP ----------------------------------------------------------------------------------------------
def test_bf16_autocast_fit_keeps_fp32_state_and_invariant(tmp_path: Path) -> None:
    model = FTPModule(scheduler=False)
    t = trainer(tmp_path, 2, precision="bf16-mixed")
    t.fit(model, loader())
    opt = t.optimizers[0]
    for p in model.net.body.parameters():
        s = ftp_state(opt, p)
        assert s["anchor"].dtype == torch.float32 and s["gamma"].dtype == torch.float32
        dist = (p.detach() - s["anchor"]).abs().reshape(p.shape[0], -1).sum(1) if p.dim() > 1 else None
        if dist is not None:
            assert (dist <= s["gamma"] + 1e-5).all()
    assert opt.param_groups[0]["ftp_step"] == 8


def test_fp16_gradscaler_skipped_steps_advance_nothing() -> None:
    net = tiny_net(0)
    opt = configure_ftp(net, torch.optim.SGD, lr=0.1, momentum=0.9)
    # A huge initial scale overflows fp16 gradients for real; the scaler then skips those steps.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40, backoff_factor=2.0**-12, growth_interval=1000)
    x, y = next(iter(loader()))
    done = skipped = 0
    for _ in range(8):
        before_params = [p.detach().clone() for p in net.parameters()]
        before_state = {p: {k: v.clone() for k, v in ftp_state(opt, p).items()} for p in opt.state}
        step_before = opt.param_groups[0]["ftp_step"]
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(net(x), y)
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        if scaler.get_scale() < scale:  # this step found inf/nan and was skipped
            skipped += 1
            assert opt.param_groups[0]["ftp_step"] == step_before
            assert all(torch.equal(a, b) for a, b in zip(before_params, net.parameters()))
            for p in opt.state:
                s = ftp_state(opt, p)
                assert all(torch.equal(before_state[p][k], s[k]) for k in before_state[p])
        else:
            done += 1
            assert opt.param_groups[0]["ftp_step"] == step_before + 1
    assert skipped >= 1 and done >= 1


# --- DDP ----------------------------------------------------------------------------------------------
DDP_SCRIPT = """
import lightning.pytorch as pl
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from lightning_reuse.optim import configure_ftp

def net():
    torch.manual_seed(0)
    n = nn.Sequential()
    n.add_module("body", nn.Sequential(nn.Linear(6, 8), nn.Tanh()))
    n.add_module("head", nn.Linear(8, 3))
    return n

class M(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = net()
    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)
    def on_train_batch_end(self, *args):
        params = torch.cat([p.detach().flatten() for p in self.parameters()])
        self.history.append(params.clone())
    def configure_optimizers(self):
        return configure_ftp(self.net, torch.optim.SGD, lr=0.2, momentum=0.9)

g = torch.Generator().manual_seed(7)
x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
model = M()
model.history = []
rank = int(os.environ.get("LOCAL_RANK", 0))  # rank r takes rows r, r + 2, ...: 4 + 4 rows = 8 consecutive ones
trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ["LIGHTNING_REUSE_TEST_NPROCS"]), strategy="ddp",
                     max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, use_distributed_sampler=False)
trainer.fit(model, DataLoader(TensorDataset(x[rank::2], y[rank::2]), batch_size=4, shuffle=False))
torch.save({"history": torch.stack(model.history), "x": x, "y": y}, f"rank{trainer.global_rank}.pt")
"""


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_two_processes_identical_and_equal_to_single_process(ddp_runner) -> None:
    result = ddp_runner(DDP_SCRIPT)
    r0 = torch.load(result.workdir / "rank0.pt")
    r1 = torch.load(result.workdir / "rank1.pt")
    assert torch.equal(r0["history"], r1["history"])  # identical on both ranks after every step
    # single process on the same global batches of 8 consecutive rows
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("body", nn.Sequential(nn.Linear(6, 8), nn.Tanh()))
    net.add_module("head", nn.Linear(8, 3))
    opt = configure_ftp(net, torch.optim.SGD, lr=0.2, momentum=0.9)
    x, y = r0["x"], r0["y"]
    history = []
    for _ in range(3):
        for i in range(0, 32, 8):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i : i + 8]), y[i : i + 8]).backward()
            opt.step()
            history.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert len(history) == len(r0["history"]) == 12
    assert torch.allclose(torch.stack(history), r0["history"], atol=1e-5)
