"""The one batch adapter: layouts, Hugging-Face-style dicts, user batch_fn, devices, model calls and outputs."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from lightning_reuse.nn.batch import (
    Batch,
    forward_inputs,
    move_to_device,
    output_tensor,
    read_batch,
    split_batch,
)

X, Y = torch.zeros(4, 3), torch.tensor([0, 1, 0, 1])
IDS, MASK = torch.ones(4, 6, dtype=torch.long), torch.ones(4, 6, dtype=torch.long)


def test_split_batch_keeps_its_layouts() -> None:
    assert split_batch((X, Y)) == (X, Y) and split_batch([X, Y, "extra"]) == (X, Y)
    assert split_batch(X) == (X, None) and split_batch((X,)) == (X, None)
    assert split_batch({"x": X, "y": Y}) == (X, Y) and split_batch({"input": X, "label": Y}) == (X, Y)
    assert split_batch({"x": X, "y": Y, "index": Y})[0] is X  # an x key is taken alone, as before
    with pytest.raises(TypeError, match=r"cannot read a batch of type int.*HINT:"):
        split_batch(3)
    with pytest.raises(ValueError, match=r"needs labelled batches.*HINT:"):
        split_batch(X, require_targets=True)


@pytest.mark.parametrize(
    ("batch", "inputs"),
    [
        ({"pixel_values": X, "labels": Y}, X),
        ({"image": X, "label": Y}, X),
        ({"input_ids": IDS, "targets": Y}, IDS),
        ({"input_ids": IDS, "attention_mask": MASK, "labels": Y}, {"input_ids": IDS, "attention_mask": MASK}),
    ],
)
def test_mapping_batches_find_labels_under_the_common_keys(batch: dict, inputs: object) -> None:
    got, targets = split_batch(batch, require_targets=True)
    assert targets is Y
    if isinstance(inputs, dict):
        assert got.keys() == inputs.keys() and all(got[k] is v for k, v in inputs.items())
    else:
        assert got is inputs


def test_a_mapping_of_targets_only_is_a_clear_error() -> None:
    with pytest.raises(
        TypeError, match=r"found no model inputs in a dict batch.*got keys \['labels'\].*HINT:"
    ):
        split_batch({"labels": Y})


def test_read_batch_gives_the_attention_mask_and_moves_the_whole_collection() -> None:
    batch = read_batch({"input_ids": IDS, "attention_mask": MASK, "labels": Y})
    assert batch.attention_mask is MASK and batch.targets is Y
    moved = batch.to("meta")
    assert moved.inputs["input_ids"].device.type == "meta" and moved.targets.device.type == "meta"
    assert read_batch((X, Y)).attention_mask is None


def test_a_user_batch_fn_returns_any_model_inputs() -> None:
    def batch_fn(raw: dict) -> tuple[dict, Tensor]:
        return {"input_ids": raw["tokens"], "attention_mask": raw["mask"]}, raw["gold"]

    batch = read_batch({"tokens": IDS, "mask": MASK, "gold": Y}, batch_fn)
    assert batch.attention_mask is MASK and batch.targets is Y
    assert batch.to("meta").inputs["attention_mask"].device.type == "meta"  # .to applies to the mapping
    pair = read_batch(((X, X), Y), lambda b: (b[0], b[1])).to("meta")
    assert isinstance(pair.inputs, tuple) and pair.inputs[1].device.type == "meta"
    with pytest.raises(
        TypeError, match=r"`batch_fn` must return \(model_inputs, targets\), got a 3-tuple.*HINT:"
    ):
        read_batch(X, lambda b: (b, None, None))


def test_move_to_device_recurses_and_keeps_other_values() -> None:
    Pair = namedtuple("Pair", "a b")
    moved = move_to_device({"a": [X, (Y, "text")], "b": Pair(X, 3), "c": None}, "meta")
    assert moved["a"][0].device.type == "meta" and moved["a"][1][0].device.type == "meta"
    assert moved["a"][1][1] == "text" and moved["c"] is None
    assert isinstance(moved["b"], Pair) and moved["b"].a.device.type == "meta" and moved["b"].b == 3


class Keywords(nn.Module):
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return input_ids.float() * (1 if attention_mask is None else attention_mask)


class Positional(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x + 1


def test_forward_inputs_calls_with_keywords_or_positionally() -> None:
    assert torch.equal(forward_inputs(Keywords(), {"input_ids": IDS, "attention_mask": MASK * 0}), IDS * 0.0)
    assert torch.equal(forward_inputs(Positional(), {"image": X}), X + 1)  # one entry forward does not name
    assert torch.equal(forward_inputs(Positional(), X), X + 1)
    assert torch.equal(forward_inputs(lambda a, b: a + b, (X, X)), X + X)
    assert torch.equal(Batch({"x": X}, None).forward(Positional()), X + 1)
    with pytest.raises(TypeError, match=r"does not take the batch keys \['tokens', 'mask'\].*HINT:"):
        forward_inputs(Positional(), {"tokens": IDS, "mask": MASK})


@dataclass
class ModelOutput:
    last_hidden_state: Tensor | None = None
    logits: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None


def test_output_tensor_reads_objects_tuples_and_dicts() -> None:
    h, logits = torch.randn(2, 3, 4), torch.randn(2, 5)
    assert output_tensor(h) is h
    assert output_tensor(ModelOutput(h, logits)) is h
    assert output_tensor(ModelOutput(h, logits), ("logits",)) is logits
    assert output_tensor(ModelOutput(hidden_states=(logits, h))) is h  # the last layer
    assert output_tensor((logits, h)) is logits and output_tensor({"logits": logits}) is logits
    assert output_tensor({"pooled": h}) is h
    with pytest.raises(TypeError, match=r"found no tensor in an output of type str.*HINT:"):
        output_tensor("text")
