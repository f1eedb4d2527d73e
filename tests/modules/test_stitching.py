"""ModelStitching: a real Lightning fit trains only the stitch; frozen halves stay bit-identical and in eval."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_reuse.modules.stitching import ModelStitching
from lightning_reuse.nn.layers import LayerNotFoundError
from lightning_reuse.nn.stitch import AffineStitch, UpsampleStitch
from lightning_reuse.samples.digits import digits_loader, load_digits_tensors
from lightning_reuse.samples.models import train_classifier
from tests.nn.test_stitch import TinyResNet


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    kwargs.setdefault("max_epochs", 2)
    return pl.Trainer(
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def models() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    x, y = load_digits_tensors()
    x, y = x[:512], y[:512]
    torch.manual_seed(0)
    sender = train_classifier(TinyResNet(), x[:384], y[:384], epochs=10, lr=1e-2, seed=0)
    torch.manual_seed(1)
    receiver = train_classifier(TinyResNet(), x[:384], y[:384], epochs=10, lr=1e-2, seed=1)
    return sender, receiver, x, y


def test_fit_trains_only_the_stitch_and_keeps_halves_frozen_in_eval(tmp_path, models) -> None:
    sender, receiver, x, y = models
    before_s, before_r = _snapshot(sender), _snapshot(receiver)
    module = ModelStitching(sender, "block2", receiver, "block1", example_input=x[:8], lr=1e-2)
    assert isinstance(module.model.stitch, UpsampleStitch)  # (16, 4, 4) -> (8, 8, 8)
    stitch_before = _snapshot(module.model.stitch)
    trainer = _trainer(tmp_path, max_epochs=3)
    trainer.fit(
        module, digits_loader(x[:384], y[:384], 64, shuffle=True), digits_loader(x[384:], y[384:], 64)
    )

    for half, before in ((sender, before_s), (receiver, before_r)):
        after = half.state_dict()
        assert all(torch.equal(after[k], v) for k, v in before.items())  # weights and BN running stats
        assert not any(m.training for m in half.modules())
        assert not any(p.requires_grad for p in half.parameters())
    assert module.model.stitch.training  # Lightning left the module in train mode; only the stitch follows
    assert any(not torch.equal(v, stitch_before[k]) for k, v in module.model.stitch.state_dict().items())

    m = trainer.callback_metrics
    assert {"train_loss", "val_stitched_acc", "val_penalty", "val_receiver_acc", "val_loss"} <= set(m)
    assert float(m["val_penalty"]) == pytest.approx(float(m["val_loss"] - m["val_receiver_loss"]), abs=1e-5)
    assert float(m["val_stitched_acc"]) > 0.3  # far above chance (0.1) after three short epochs

    # what Lightning's validate reports equals a direct evaluation of the stitched network
    (res,) = trainer.validate(module, digits_loader(x[384:], y[384:], 64), verbose=False)
    with torch.no_grad():
        module.eval()
        direct = (module(x[384:]).argmax(-1) == y[384:]).float().mean()
    assert res["val_stitched_acc"] == pytest.approx(float(direct), abs=1e-6)


def test_sgd_warmup_cosine_schedule(tmp_path, models) -> None:
    sender, receiver, x, y = models
    module = ModelStitching(
        sender, "block1", receiver, "block1", example_input=x[:8], warmup_fraction=0.5,
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=0.01),
    )  # fmt: skip
    lrs: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    _trainer(tmp_path, max_epochs=1, callbacks=[Record()]).fit(module, digits_loader(x[:256], y[:256], 32))
    assert len(lrs) == 8
    assert lrs[:4] == sorted(lrs[:4]) and lrs[0] < lrs[3] <= 0.05  # linear warm-up
    assert lrs[4:] == sorted(lrs[4:], reverse=True)  # cosine decay


def test_argument_errors(models) -> None:
    sender, receiver, x, _ = models
    with pytest.raises(LayerNotFoundError, match="Valid names:.*'block2'"):
        ModelStitching(sender, "block3", receiver, "block1", example_input=x[:8])
    with pytest.raises(ValueError, match="`optimizer` must be"):
        ModelStitching(sender, "block1", receiver, "block1", example_input=x[:8], optimizer="lion")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no trainable parameter"):
        ModelStitching(sender, "block1", receiver, "block1", stitch=AffineStitch((8, 8, 8), (8, 8, 8)))


@pytest.mark.ddp
@pytest.mark.slow  # ~18 s: two processes start Lightning
def test_ddp_fit_keeps_halves_frozen_and_stitch_replicas_identical(ddp_runner) -> None:
    result = ddp_runner(
        """
import lightning.pytorch as pl
from lightning_reuse.samples.digits import digits_loader, load_digits_tensors
from lightning_reuse.modules.stitching import ModelStitching
from tests.nn.test_stitch import TinyResNet

torch.manual_seed(0)
sender, receiver = TinyResNet().eval(), TinyResNet().eval()
before = {k: v.clone() for k, v in [*sender.state_dict().items(), *receiver.state_dict().items()]}
x, y = load_digits_tensors()
module = ModelStitching(sender, "block2", receiver, "block2", example_input=x[:8], lr=1e-2)
trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ["LIGHTNING_REUSE_TEST_NPROCS"]), strategy="ddp",
                     max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)
trainer.fit(module, digits_loader(x[:256], y[:256], 32), digits_loader(x[256:384], y[256:384], 32))
after = {k: v for k, v in [*sender.state_dict().items(), *receiver.state_dict().items()]}
torch.save({"same_halves": all(torch.equal(before[k], after[k]) for k in before),
            "eval": not any(m.training for m in [*sender.modules(), *receiver.modules()]),
            "stitch": {k: v.clone() for k, v in module.model.stitch.state_dict().items()},
            "val_acc": float(trainer.callback_metrics["val_stitched_acc"])}, f"rank{trainer.global_rank}.pt")
"""
    )
    r0, r1 = (torch.load(result.workdir / f"rank{r}.pt") for r in (0, 1))
    assert r0["same_halves"] and r1["same_halves"] and r0["eval"] and r1["eval"]
    assert all(torch.equal(v, r1["stitch"][k]) for k, v in r0["stitch"].items())  # replicas identical
    assert r0["val_acc"] == r1["val_acc"]  # the accuracy metric is synchronised across ranks
