"""The LightningModules speak one language: optimizer factory, `layer`, split_batch, @override, one fingerprint."""

from __future__ import annotations

import functools
import inspect
import re
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_reuse import AdditiveFineTuning, ModelReprogramming, ModelStitching
from lightning_reuse._warnings import LightningReuseWarning
from lightning_reuse.modules import ImageClassifier
from lightning_reuse.modules.reprogramming import _legacy_source_fingerprint, source_fingerprint
from lightning_reuse.nn import (
    AdditiveModel,
    FrequencyLabelMapping,
    PaddingPrompt,
    SideMLP,
    base_fingerprint,
    module_fingerprint,
)
from lightning_reuse.samples import SmallCNN

pytestmark = pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*")


def _base() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(width=4).eval().requires_grad_(False)


def _modules(**kwargs) -> dict[str, pl.LightningModule]:
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8)
    return {
        "classifier": ImageClassifier(SmallCNN(width=4), **kwargs),
        "additive": AdditiveFineTuning(_base(), SideMLP(64, 10, width=4), **kwargs),
        "reprogramming": ModelReprogramming(
            SmallCNN(width=4), PaddingPrompt((1, 8, 8), (1, 12, 12)), FrequencyLabelMapping(10, 10), **kwargs
        ),
        "stitching": ModelStitching(_base(), "block1", _base(), "block1", example_input=x, **kwargs),
    }


def _fit(module: pl.LightningModule, tmp_path, **kwargs) -> pl.Trainer:
    torch.manual_seed(0)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = pl.Trainer(
        max_epochs=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
    trainer.fit(module, loader, loader)
    return trainer


@pytest.mark.parametrize("cls", [ImageClassifier, AdditiveFineTuning, ModelReprogramming, ModelStitching])
def test_every_lightning_hook_is_marked_override(cls: type) -> None:
    hooks = {
        name
        for name, _ in inspect.getmembers(cls, inspect.isfunction)
        if name in cls.__dict__ and hasattr(pl.LightningModule, name) and not name.startswith("__")
    }
    missing = sorted(name for name in hooks if not getattr(cls.__dict__[name], "__override__", False))
    assert hooks and not missing, f"{cls.__name__}: hooks without @override: {missing}"


def test_optimizer_option_is_a_factory_with_a_default(tmp_path) -> None:
    assert all(module.optimizer_factory is None for module in _modules().values())  # the documented default
    seen: list = []

    def factory(params):
        seen.append(params)
        return torch.optim.SGD(params, lr=0.1)

    for name, module in _modules(optimizer=factory).items():
        trainer = _fit(module, tmp_path, max_steps=1)
        assert isinstance(trainer.optimizers[0], torch.optim.SGD), name
    assert len(seen) == 4


@pytest.mark.parametrize("cls", [ImageClassifier, AdditiveFineTuning, ModelReprogramming, ModelStitching])
def test_optimizer_rejects_what_is_not_a_factory(cls: type) -> None:
    args = inspect.signature(cls).parameters
    assert "optimizer" in args and args["optimizer"].default is None
    with pytest.raises(ValueError, match="`optimizer` must be one of.*got 3.*HINT"):
        if cls is ImageClassifier:
            cls(SmallCNN(width=4), optimizer=3)
        elif cls is AdditiveFineTuning:
            cls(_base(), SideMLP(64, 10, width=4), optimizer=3)
        elif cls is ModelReprogramming:
            cls(
                SmallCNN(width=4),
                PaddingPrompt((1, 8, 8), (1, 12, 12)),
                FrequencyLabelMapping(10, 10),
                optimizer=3,
            )
        else:
            cls(_base(), "block1", _base(), "block1", example_input=torch.rand(4, 1, 8, 8), optimizer=3)


def test_deprecated_optimizer_strings_still_work() -> None:
    x = torch.rand(4, 1, 8, 8)
    with pytest.warns(DeprecationWarning, match="optimizer='sgd'.*HINT"):
        module = ModelStitching(
            _base(), "block1", _base(), "block1", example_input=x, optimizer="sgd", lr=0.05, weight_decay=0.01
        )
    factory = module.optimizer_factory
    assert isinstance(factory, functools.partial) and factory.func is torch.optim.SGD
    assert factory.keywords == {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}
    with pytest.warns(DeprecationWarning, match="optimizer='adam'"):
        module = ModelReprogramming(
            SmallCNN(width=4),
            PaddingPrompt((1, 8, 8), (1, 12, 12)),
            FrequencyLabelMapping(10, 10),
            optimizer="adam",
        )
    assert module.optimizer_factory is None  # Adam is the default


def test_layer_is_the_argument_and_feature_a_deprecated_spelling() -> None:
    x = torch.rand(2, 1, 8, 8)
    assert AdditiveModel.from_base(_base(), x, width=3, layer="pool").layer == "pool"
    with pytest.warns(DeprecationWarning, match="`feature` is deprecated.*layer='pool'"):
        model = AdditiveModel.from_base(_base(), x, width=3, feature="pool")
    assert model.layer == "pool"
    with pytest.warns(DeprecationWarning, match="`feature` is deprecated"):
        assert AdditiveModel(_base(), SideMLP(16, 10, width=2), feature="pool").layer == "pool"
    with pytest.warns(DeprecationWarning, match="`feature` is deprecated"):
        module = AdditiveFineTuning(_base(), SideMLP(16, 10, width=2), feature="pool")
    assert module.model.layer == "pool" and module.hparams["layer"] == "pool"
    assert "feature" not in module.hparams


def test_batches_are_read_one_way() -> None:
    torch.manual_seed(0)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    for name, module in _modules().items():
        module.log = lambda *args, **kwargs: None  # no trainer attached: the step itself is under test
        as_tuple = module.training_step((x, y), 0)
        as_dict = module.training_step({"x": x, "y": y}, 0)
        assert torch.equal(as_tuple, as_dict), name
        with pytest.raises(ValueError, match=r"expects batches \(x, y\).*HINT"):
            module.training_step(x, 0)


def test_one_fingerprint_and_deprecated_aliases() -> None:
    base = _base()
    with pytest.warns(DeprecationWarning, match="module_fingerprint"):
        old_base = base_fingerprint(base)
    with pytest.warns(DeprecationWarning, match="module_fingerprint"):
        old_source = source_fingerprint(base)
    assert old_base == old_source == module_fingerprint(base)
    assert AdditiveFineTuning(base, SideMLP(64, 10, width=2)).base_fingerprint == module_fingerprint(base)


def test_reprogramming_checkpoints_of_release_0_1_load_without_a_warning() -> None:
    source = SmallCNN(width=4)
    parts = (PaddingPrompt((1, 8, 8), (1, 12, 12)), FrequencyLabelMapping(10, 10))
    module = ModelReprogramming(source, *parts)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["reprogramming"]["source"]["fingerprint"] == module_fingerprint(source)
    checkpoint["reprogramming"]["source"]["fingerprint"] = _legacy_source_fingerprint(source)
    assert _legacy_source_fingerprint(source) != module_fingerprint(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ModelReprogramming(source, *parts).on_load_checkpoint(checkpoint)
    checkpoint["reprogramming"]["source"]["fingerprint"] = "0" * 64
    with pytest.warns(LightningReuseWarning, match="weights differ"):
        ModelReprogramming(source, *parts).on_load_checkpoint(checkpoint)


def test_logged_keys_are_stage_underscore_metric(tmp_path) -> None:
    for name, module in _modules().items():
        keys = set(_fit(module, tmp_path).callback_metrics)
        assert keys and all(re.fullmatch(r"(train|val|test)_[a-z_]+", k) for k in keys), (name, keys)


def test_image_classifier_head_name_is_a_deprecated_spelling_of_head_layer() -> None:
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match=r"`head_name` is deprecated.*HINT: pass `head_layer='head'`"):
        module = ImageClassifier(SmallCNN(width=4), trainable="head", head_name="head")
    assert module.head_layer == "head" and "head_name" not in module.hparams
    assert {n for n, p in module.model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
