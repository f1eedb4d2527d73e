"""Token models as users bring them: dict batches padded per batch, keyword inputs, output objects, RESQUE."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from lightning_reuse.callbacks.energy_monitor import EnergyMonitor
from lightning_reuse.callbacks.resque_check import RESQUECheck
from lightning_reuse.functional import pool_features, resque_dist
from lightning_reuse.nn.batch import read_batch
from lightning_reuse.nn.layers import capture_output
from lightning_reuse.optim import FTP
from tests.helpers import token_models as tm


@functools.cache
def text_encoder() -> tm.TextEncoder:
    return tm.trained_text_encoder()


@functools.cache
def patch_transformer() -> tm.PatchTransformer:
    return tm.trained_patch_transformer()


class TokenModule(pl.LightningModule):
    """A user's LightningModule around a token model: keyword inputs, an output object, FTP as optimizer."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, **inputs: Any) -> tm.TokenModelOutput:
        return self.net(**inputs)

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        read = read_batch(batch)
        loss = torch.nn.functional.cross_entropy(read.forward(self).logits, read.targets)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return FTP(torch.optim.Adam(self.parameters(), lr=1e-3))


class VisionModule(TokenModule):
    """The same around a vision model whose forward takes ``pixel_values``."""

    def forward(self, pixel_values: torch.Tensor) -> tm.TokenModelOutput:  # type: ignore[override]
        return self.net(pixel_values)


def trainer_for(tmp_path: Path, callbacks: list[pl.Callback], **kw: Any) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        callbacks=callbacks,
        logger=False,
        max_epochs=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def test_the_token_models_are_trained_and_return_output_objects() -> None:
    seqs, y = tm.sentences(seed=7)
    text_acc = tm.accuracy(
        text_encoder(), [(read_batch(b).inputs, b["labels"]) for b in tm.text_loader(seqs, y)]
    )
    x, labels = tm.load_digits_tensors()
    vision_acc = tm.accuracy(patch_transformer(), [({"pixel_values": x[600:1200]}, labels[600:1200])])
    assert text_acc > 0.9 and vision_acc > 0.5  # chance: 0.25 and 0.1
    widths = {b["input_ids"].shape[1] for b in tm.text_loader(seqs, y)}
    assert len(widths) > 1  # padded per batch: the sequence length varies across batches
    out = patch_transformer()(x[:2])
    assert out.last_hidden_state.shape == (2, 17, 32) and out.logits.shape == (2, 10)


def features(model: torch.nn.Module, loader: Any, pooling: str = "token_mean") -> torch.Tensor:
    out = []
    with torch.no_grad(), capture_output(model, "norm") as store:
        for batch in loader:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            out.append(pool_features(store["output"], pooling, batch["attention_mask"]))  # type: ignore[arg-type]
    return torch.cat(out)


def test_text_dict_batches_padded_per_batch_through_resque_check(tmp_path: Path) -> None:
    seqs, y = tm.sentences(n=300, seed=7)
    shifted = tm.substitute_tokens(seqs, 0.3)
    module = TokenModule(copy.deepcopy(text_encoder()))
    check = RESQUECheck(
        tm.text_loader(shifted, y),
        layer="net.norm",
        original_dataloader=tm.text_loader(seqs, y, batch_size=50),
        num_classes=4,
        progress_bar=False,
    )
    result = check.run(trainer_for(tmp_path, []), module)  # labelled by the `labels` key, model(**inputs)
    assert result.n_samples == {"original": 300, "shifted": 300}
    net = module.net
    expected = resque_dist(
        features(net, tm.text_loader(seqs, y)), y, features(net, tm.text_loader(shifted, y)), y
    )
    assert result.score == pytest.approx(float(expected), abs=1e-9)


def test_masked_token_mean_ignores_padding() -> None:
    seqs, y = tm.sentences(n=64, seed=3)
    net = text_encoder()
    per_batch = features(net, tm.text_loader(seqs, y, batch_size=8))
    ids, mask = tm.pad_batch(seqs + [torch.ones(30, dtype=torch.long)])  # everything padded to 30 tokens
    padded = features(net, [{"input_ids": ids[:-1], "attention_mask": mask[:-1]}])
    assert torch.allclose(per_batch, padded, atol=1e-5)
    unmasked = features(net, [{"input_ids": ids[:-1], "attention_mask": mask[:-1]}], "feature_mean")
    assert unmasked.shape == (64, 30)  # one value per token: its width follows the padding


def test_feature_mean_under_per_batch_padding_is_a_clear_error(tmp_path: Path) -> None:
    seqs, y = tm.sentences(n=128, seed=7)
    check = RESQUECheck(tm.text_loader(seqs, y), layer="net.norm", pooling="feature_mean", progress_bar=False)
    with pytest.raises(
        ValueError, match=r"width changed from \d+ to \d+.*sequence length.*HINT: .*token_mean"
    ):
        check.run(trainer_for(tmp_path, []), TokenModule(copy.deepcopy(text_encoder())))


def scores(
    tmp_path: Path, module: pl.LightningModule, original: Any, shifted: list[Any], k: int
) -> list[float]:
    trainer = trainer_for(tmp_path, [])
    return [
        RESQUECheck(s, layer="net.norm", original_dataloader=original, num_classes=k, progress_bar=False)
        .run(trainer, module)
        .score
        for s in shifted
    ]


def test_rising_token_shift_gives_rising_scores_with_the_default_pooling(tmp_path: Path) -> None:
    seqs, y = tm.sentences(n=300, seed=7)
    text = TokenModule(copy.deepcopy(text_encoder()))
    rates = (0.1, 0.3, 0.6)
    shifted = [tm.text_loader(tm.substitute_tokens(seqs, r, seed=1), y) for r in rates]
    text_scores = scores(tmp_path, text, tm.text_loader(seqs, y), shifted, 4)
    x, labels = tm.load_digits_tensors()
    x, labels = x[600:1000], labels[600:1000]
    vision = VisionModule(copy.deepcopy(patch_transformer()))  # `{"pixel_values", "labels"}` batches
    noisy = [tm.image_loader(tm.noisy_pixels(x, level, seed=1), labels) for level in (0.1, 0.4, 1.6)]
    vision_scores = scores(tmp_path, vision, tm.image_loader(x, labels), noisy, 10)
    for s in (text_scores, vision_scores):
        assert s == sorted(s) and s[0] < s[-1] / 3, s


def text_resque_check(seqs: list[torch.Tensor], y: torch.Tensor, layer: str) -> RESQUECheck:
    """RESQUE of 20% substituted tokens against the clean sentences, at ``layer``, on dict batches."""
    return RESQUECheck(
        tm.text_loader(tm.substitute_tokens(seqs, 0.2), y),
        layer=layer,
        original_dataloader=tm.text_loader(seqs, y),
        num_classes=4,
        progress_bar=False,
    )


def test_one_fit_with_dict_batches_resque_check_energy_monitor_and_ftp(tmp_path: Path) -> None:
    torch.manual_seed(0)
    seqs, y = tm.sentences(n=256, seed=7)
    module = TokenModule(copy.deepcopy(text_encoder()))
    check = text_resque_check(seqs, y, layer="net.norm")
    monitor = EnergyMonitor(backend="simulated")
    trainer = trainer_for(tmp_path, [monitor, check], limit_train_batches=4)
    trainer.fit(module, tm.text_loader(seqs, y))
    assert trainer.global_step == 4 and torch.isfinite(trainer.callback_metrics["train_loss"])
    assert 0 < check.result.score < 0.2
    assert check.result.energy == monitor.windows["resque-precheck"] and monitor.total.energy_wh > 0


def test_additive_fine_tuning_on_dict_batches_with_resque_check_and_energy_monitor(tmp_path: Path) -> None:
    """AdditiveFineTuning reads `{"input_ids", "attention_mask", "labels"}` batches padded per batch, calls the
    base with keyword inputs, reads its output object, and keeps the base bit-identical."""
    from lightning_reuse import AdditiveFineTuning
    from lightning_reuse.nn import AdditiveModel

    torch.manual_seed(0)
    seqs, y = tm.sentences(n=192, seed=11)
    base = copy.deepcopy(text_encoder()).requires_grad_(False)
    before = copy.deepcopy(base.state_dict())
    example = next(iter(tm.text_loader(seqs, y)))
    inputs = {k: v for k, v in example.items() if k != "labels"}
    model = AdditiveModel.from_base(base, inputs, width=8, layer="head")  # the side reads the base's logits
    module = AdditiveFineTuning(model.base, model.side, layer="head", lr=1e-2)
    check = text_resque_check(seqs, y, layer="model.base.norm")
    monitor = EnergyMonitor(backend="simulated")
    trainer = trainer_for(tmp_path, [monitor, check], limit_train_batches=4)
    trainer.fit(module, tm.text_loader(seqs, y))
    assert trainer.global_step == 4 and torch.isfinite(trainer.callback_metrics["train_loss"])
    assert 0 < check.result.score < 0.2 and monitor.total.energy_wh > 0
    assert all(torch.equal(before[k], v) for k, v in module.model.base.state_dict().items())
    with torch.no_grad():
        out = module(inputs)
    assert out.shape == (len(example["labels"]), 4)
