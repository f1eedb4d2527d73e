"""ModelReprogramming with real Lightning fits: learning where it must, frozen source, ILM schedule, checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_reuse._warnings import LightningReuseWarning
from lightning_reuse.modules.reprogramming import ModelReprogramming, describe_source
from lightning_reuse.nn import module_fingerprint
from lightning_reuse.nn.label_mapping import (
    FrequencyLabelMapping,
    IterativeLabelMapping,
    LinearLabelMapping,
    OneToOneLabelMapping,
)
from lightning_reuse.nn.prompts import FullPrompt, PaddingPrompt
from lightning_reuse.samples.digits import digits_loader, load_digits_tensors, split_indices
from lightning_reuse.samples.efficientnet import load_efficientnet_lite0
from lightning_reuse.samples.models import accuracy, train_classifier

SHIFT = 5  # target label = (digit + SHIFT) % 10


def framed(x8: torch.Tensor, border: torch.Tensor) -> torch.Tensor:
    """8x8 digits in the centre of 12x12 images whose 2-pixel frame has the per-sample value ``border``."""
    out = border.view(-1, 1, 1, 1).expand(len(x8), 1, 12, 12).clone()
    out[:, :, 2:10, 2:10] = x8
    return out


@pytest.fixture(scope="module")
def frame_source() -> nn.Module:
    """A source whose answer depends on the frame: grey frame (0.5) -> the digit, light frame (0.9) -> the
    digit + SHIFT. At init the padding prompt is sigmoid(0) = 0.5 (grey), so on the target task "digit + SHIFT"
    with the identity mapping the source is nearly always wrong: only a trained prompt can fix it."""
    torch.set_num_threads(1)
    x, y = load_digits_tensors()
    torch.manual_seed(0)
    light = torch.rand(len(x), generator=torch.Generator().manual_seed(0)) < 0.5
    xs = framed(x, torch.where(light, 0.9, 0.5))
    ys = torch.where(light, (y + SHIFT) % 10, y)
    source = nn.Sequential(nn.Flatten(), nn.Linear(144, 128), nn.ReLU(), nn.Linear(128, 10))
    train_classifier(source, xs, ys, epochs=15, lr=1e-2)
    assert accuracy(source, xs, ys) > 0.85
    return source


def trainer(tmp_path: Path, **kwargs: Any) -> pl.Trainer:
    opts: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        "num_sanity_val_steps": 0,
    }
    opts.update(kwargs)
    return pl.Trainer(**opts)


class ModeRecorder(pl.Callback):
    """Records the train/eval flag of every source sub-module and of the prompt at every training batch."""

    def __init__(self) -> None:
        self.source_flags: list[bool] = []
        self.prompt_flags: list[bool] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.source_flags += [m.training for m in pl_module.model.source.modules()]
        self.prompt_flags.append(pl_module.model.transform.training)


def test_padding_prompt_learns_where_it_must_and_source_stays_frozen(tmp_path: Path, frame_source) -> None:
    x, y = load_digits_tensors()
    target = (y + SHIFT) % 10
    train_idx, val_idx = split_indices(len(x), (0.7, 0.3), seed=0)
    module = ModelReprogramming(
        frame_source, PaddingPrompt((1, 8, 8), (1, 12, 12)), OneToOneLabelMapping(10, 10), lr=0.1
    )
    before = accuracy(module.model, x[val_idx], target[val_idx])
    frozen = {k: v.clone() for k, v in frame_source.state_dict().items()}
    recorder = ModeRecorder()
    t = trainer(tmp_path, max_epochs=3, callbacks=[recorder])
    t.fit(
        module,
        digits_loader(x[train_idx], target[train_idx], batch_size=64, shuffle=True),
        digits_loader(x[val_idx], target[val_idx], batch_size=256),
    )
    after = float(t.callback_metrics["val_acc"])
    assert before < 0.1 and after > 0.75, (before, after)  # chance is 0.1
    assert after == pytest.approx(accuracy(module.model, x[val_idx], target[val_idx]), abs=1e-6)
    # frozen parts: bit-unchanged, never trained, in eval mode during and after the fit
    assert all(torch.equal(v, frame_source.state_dict()[k]) for k, v in frozen.items())
    assert not any(p.requires_grad for p in frame_source.parameters())
    assert recorder.source_flags and not any(recorder.source_flags)
    assert all(recorder.prompt_flags)
    assert not any(m.training for m in frame_source.modules())
    # only the masked border of the prompt moved
    theta, mask = module.model.transform.theta.detach(), module.model.transform.mask.bool()
    assert torch.all(theta[~mask] == 0) and theta[mask].abs().min() > 0


def test_ilm_remaps_on_schedule_and_flm_once(tmp_path: Path, frame_source) -> None:
    x, y = load_digits_tensors()
    x, target = x[:512], (y[:512] + SHIFT) % 10
    expected = [(c - SHIFT) % 10 for c in range(10)]  # grey frame -> the source predicts the digit
    ilm = ModelReprogramming(
        frame_source, PaddingPrompt((1, 8, 8), (1, 12, 12)), IterativeLabelMapping(10, 10, 2)
    )
    t = trainer(tmp_path, max_epochs=5, limit_train_batches=2)
    t.fit(ilm, digits_loader(x, target, batch_size=128, shuffle=True))
    assert [e["epoch"] for e in ilm.remap_history] == [0, 2, 4]
    assert ilm.remap_history[0]["mapping"] == expected  # counted under the initial prompt
    assert ilm.model.mapping.mapping.tolist() == ilm.remap_history[-1]["mapping"]
    assert ilm.model.mapping.counts.sum() == len(x)  # the whole training set was counted
    assert "train_mapping_changed" in t.callback_metrics

    flm = ModelReprogramming(
        frame_source, PaddingPrompt((1, 8, 8), (1, 12, 12)), FrequencyLabelMapping(10, 10)
    )
    trainer(tmp_path, max_epochs=3, limit_train_batches=1).fit(flm, digits_loader(x, target, batch_size=128))
    assert [e["epoch"] for e in flm.remap_history] == [0]
    assert flm.model.mapping.mapping.tolist() == expected


def test_learned_linear_mapping_trains_with_the_prompt(tmp_path: Path, frame_source) -> None:
    x, y = load_digits_tensors()
    module = ModelReprogramming(frame_source, FullPrompt((1, 8, 8), (1, 12, 12)), LinearLabelMapping(10, 4))
    w0 = module.model.mapping.linear.weight.detach().clone()
    trainer(tmp_path, max_epochs=1, limit_train_batches=3).fit(module, digits_loader(x, y % 4, batch_size=64))
    assert not torch.equal(w0, module.model.mapping.linear.weight) and not module.remap_history


def test_multistep_lr_at_50_and_72_percent(tmp_path: Path, frame_source) -> None:
    x, y = load_digits_tensors()
    module = ModelReprogramming(
        frame_source, PaddingPrompt((1, 8, 8), (1, 12, 12)), OneToOneLabelMapping(10, 10)
    )
    lrs: list[float] = []

    class LR(pl.Callback):
        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer(tmp_path, max_epochs=10, limit_train_batches=1, callbacks=[LR()]).fit(
        module, digits_loader(x[:32], y[:32], batch_size=32)
    )
    assert lrs == pytest.approx([0.01] * 5 + [0.001] * 2 + [0.0001] * 3)


def test_checkpoint_holds_only_what_trains_and_reloads(tmp_path: Path, frame_source) -> None:
    x, y = load_digits_tensors()
    loader = digits_loader(x[:256], y[:256], batch_size=64)
    module = ModelReprogramming(
        frame_source,
        PaddingPrompt((1, 8, 8), (1, 12, 12)),
        IterativeLabelMapping(10, 10),
        source_name="frame-mlp",
    )
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(
        tmp_path, max_epochs=2, limit_train_batches=2, enable_checkpointing=True, callbacks=[ckpt_cb]
    ).fit(module, loader)
    path = tmp_path / "ckpt" / "last.ckpt"
    ckpt = torch.load(path, weights_only=False)
    assert sorted(ckpt["state_dict"]) == [
        "model.mapping.counts",
        "model.mapping.mapping",
        "model.transform.mask",
        "model.transform.mean",
        "model.transform.std",
        "model.transform.theta",
    ]
    ref = ckpt["reprogramming"]["source"]
    assert ref == describe_source(frame_source, "frame-mlp")
    assert (
        ref["class"] == "torch.nn.modules.container.Sequential"
        and ref["num_parameters"] == 144 * 128 + 128 + 1290
    )
    assert [e["epoch"] for e in ckpt["reprogramming"]["remap_history"]] == [0, 1]

    loaded = ModelReprogramming.load_from_checkpoint(
        path,
        source=frame_source,
        transform=PaddingPrompt((1, 8, 8), (1, 12, 12)),
        mapping=IterativeLabelMapping(10, 10),
    )
    assert torch.equal(loaded.model.transform.theta, module.model.transform.theta)
    assert torch.equal(loaded.model.mapping.mapping, module.model.mapping.mapping)
    assert loaded.remap_history == module.remap_history and loaded.hparams.source_name == "frame-mlp"
    assert not loaded.model.source.training

    # resuming a fit restores the prompt through the Trainer's strict loading path
    resumed = ModelReprogramming(
        frame_source, PaddingPrompt((1, 8, 8), (1, 12, 12)), IterativeLabelMapping(10, 10)
    )
    trainer(tmp_path, max_epochs=3, limit_train_batches=2).fit(resumed, loader, ckpt_path=path)
    assert [e["epoch"] for e in resumed.remap_history] == [0, 1, 2]

    other = nn.Sequential(nn.Flatten(), nn.Linear(144, 128), nn.ReLU(), nn.Linear(128, 10))
    with pytest.warns(LightningReuseWarning, match="weights differ"):
        ModelReprogramming.load_from_checkpoint(
            path,
            source=other,
            transform=PaddingPrompt((1, 8, 8), (1, 12, 12)),
            mapping=IterativeLabelMapping(10, 10),
        )
    with pytest.raises(
        ValueError, match="trained on a source of class torch.nn.modules.container.Sequential"
    ):
        ModelReprogramming.load_from_checkpoint(
            path,
            source=nn.Flatten(),
            transform=FullPrompt((1, 8, 8), (1, 8, 8)),
            mapping=IterativeLabelMapping(64, 10),
            strict=False,
        )


def test_bad_inputs_raise_clear_errors(frame_source) -> None:
    with pytest.raises(ValueError, match=r"num_target <= num_source.*num_target=11"):
        ModelReprogramming(frame_source, PaddingPrompt((1, 8, 8), (1, 12, 12)), FrequencyLabelMapping(10, 11))
    with pytest.raises(ValueError, match="larger than the source input"):
        ModelReprogramming(
            frame_source, PaddingPrompt((1, 14, 14), (1, 12, 12)), FrequencyLabelMapping(10, 10)
        )
    with pytest.raises(ValueError, match="Channel counts do not fit"):
        ModelReprogramming(frame_source, PaddingPrompt((3, 8, 8), (1, 12, 12)), FrequencyLabelMapping(10, 10))
    with pytest.raises(ValueError, match="rejected an input"):  # the source takes 1 channel, not 3
        ModelReprogramming(frame_source, PaddingPrompt((1, 8, 8), (3, 12, 12)), FrequencyLabelMapping(10, 10))
    parts = (frame_source, PaddingPrompt((1, 8, 8), (1, 12, 12)), FrequencyLabelMapping(10, 10))
    with pytest.raises(ValueError, match="`optimizer` must be one of"):
        ModelReprogramming(*parts, optimizer="lbfgs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`milestones` are fractions"):
        ModelReprogramming(*parts, milestones=(50, 72))
    module = ModelReprogramming(*parts)
    with pytest.raises(ValueError, match=r"expects batches \(x, y\)"):
        module.training_step(torch.zeros(2, 1, 8, 8), 0)
    with pytest.raises(TypeError, match="Only frequency/iterative"):
        ModelReprogramming(frame_source, parts[1], OneToOneLabelMapping(10, 10)).remap([])


def test_efficientnet_lite0_smoke_fit_keeps_source_unchanged(tmp_path: Path) -> None:
    """ImageNet EfficientNet-Lite0 (BatchNorm + dropout) reprogrammed for digits padded into 64 px."""
    source, norm = load_efficientnet_lite0(image_size=64)
    fingerprint = module_fingerprint(source)  # parameters AND BatchNorm running statistics
    transform = PaddingPrompt((1, 8, 8), (3, 64, 64), resize=32, mean=norm.mean, std=norm.std)
    module = ModelReprogramming(
        source, transform, FrequencyLabelMapping(1000, 10), source_name="efficientnet-lite0"
    )
    x, y = load_digits_tensors()
    recorder = ModeRecorder()
    trainer(tmp_path, max_epochs=1, callbacks=[recorder]).fit(
        module, digits_loader(x[:64], y[:64], batch_size=32)
    )
    assert module_fingerprint(source) == fingerprint
    assert recorder.source_flags and not any(recorder.source_flags)
    assert not any(m.training for m in source.modules())
    assert module.model.transform.theta.detach()[transform.mask.bool()].abs().min() > 0
    assert len(set(module.model.mapping.mapping.tolist())) == 10 and module.model.mapping.counts.sum() == 64


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_counts_are_summed_over_ranks(ddp_runner, frame_source, tmp_path: Path) -> None:
    torch.save(frame_source, tmp_path / "source.pt")
    result = ddp_runner(
        """
import lightning.pytorch as pl
from lightning_reuse.samples.digits import digits_loader, load_digits_tensors
from lightning_reuse.modules.reprogramming import ModelReprogramming
from lightning_reuse.nn import module_fingerprint
from lightning_reuse.nn.label_mapping import IterativeLabelMapping
from lightning_reuse.nn.prompts import PaddingPrompt

source = torch.load("source.pt", weights_only=False)
before = module_fingerprint(source)
x, y = load_digits_tensors()
x, target = x[:256], (y[:256] + 5) % 10
module = ModelReprogramming(source, PaddingPrompt((1, 8, 8), (1, 12, 12)), IterativeLabelMapping(10, 10), lr=0.05)
trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ["LIGHTNING_REUSE_TEST_NPROCS"]), strategy="ddp",
                     max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)
trainer.fit(module, digits_loader(x, target, batch_size=64))
torch.save({"history": module.remap_history, "counts": module.model.mapping.counts,
            "theta": module.model.transform.theta.detach(), "unchanged": module_fingerprint(source) == before,
            "eval": not any(m.training for m in source.modules())}, f"rank{trainer.global_rank}.pt")
"""
    )
    r0, r1 = (torch.load(result.workdir / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["history"] == r1["history"] and [e["epoch"] for e in r0["history"]] == [0, 1]
    assert int(r0["counts"].sum()) == 256  # both halves of the data were counted on every rank
    assert torch.equal(r0["theta"], r1["theta"])
    assert r0["unchanged"] and r1["unchanged"] and r0["eval"] and r1["eval"]
