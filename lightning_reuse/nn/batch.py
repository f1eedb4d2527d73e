"""One way to read a batch: what a dataloader yields becomes model inputs and targets, for every part.

- :func:`split_batch` turns a batch into ``(inputs, targets)``; ``inputs`` is a tensor, or, for a mapping
  batch without an ``x``/``input`` key, the rest of the mapping (the model is then called as
  ``model(**inputs)``).
- :func:`read_batch` returns a :class:`Batch` (inputs, targets, attention mask) from the batch or from a
  user ``batch_fn`` returning ``(model_inputs, targets)``; :meth:`Batch.to` moves the whole collection to a
  device and :meth:`Batch.forward` calls a model with it.
- :func:`output_tensor` reads one tensor out of what a model or layer returned: a tensor, a tuple, a dict
  or an object such as a Hugging Face ``ModelOutput`` (``last_hidden_state``, ``logits``,
  ``hidden_states``).

Every part that reads user batches (the pre-check callbacks, the LightningModules) goes through here, so a
batch layout that works for one part works for all of them.

Example:
    >>> import torch
    >>> x, y = torch.zeros(4, 3), torch.tensor([0, 1, 0, 1])
    >>> split_batch((x, y))[1].tolist(), split_batch(x)[1], split_batch({"x": x, "y": y})[0].shape
    ([0, 1, 0, 1], None, torch.Size([4, 3]))
    >>> ids, mask = torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5)
    >>> batch = read_batch({"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1])})
    >>> sorted(batch.inputs), batch.targets.tolist(), batch.attention_mask is mask
    (['attention_mask', 'input_ids'], [0, 1], True)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

INPUT_KEYS: tuple[str, ...] = ("x", "input", "pixel_values", "image", "input_ids")
TARGET_KEYS: tuple[str, ...] = ("y", "label", "labels", "targets")
MASK_KEY = "attention_mask"
OUTPUT_KEYS: tuple[str, ...] = ("last_hidden_state", "logits", "hidden_states")
_DIRECT_INPUT_KEYS: tuple[str, ...] = ("x", "input")  # taken alone, whatever else the mapping holds


def _first(batch: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((batch[k] for k in keys if k in batch), None)


def _mapping_inputs(batch: Mapping[str, Any], who: str) -> Any:
    """The model inputs of a mapping batch: ``x``/``input`` alone, else every non-target entry."""
    direct = _first(batch, _DIRECT_INPUT_KEYS)
    if direct is not None:
        return direct
    rest = {k: v for k, v in batch.items() if k not in TARGET_KEYS}
    if not rest:
        raise TypeError(
            f"{who} found no model inputs in a dict batch: expected one of {list(INPUT_KEYS)} (or any other "
            f"key besides the targets {list(TARGET_KEYS)}), got keys {sorted(batch)}. HINT: yield "
            "(inputs, targets) tuples, or a dict with keys 'x' and 'y'."
        )
    return next(iter(rest.values())) if len(rest) == 1 else rest


def split_batch(
    batch: Any, *, require_targets: bool = False, who: str = "This part"
) -> tuple[Any, Tensor | None]:
    """Return ``(inputs, targets)`` of a batch; ``targets`` is None for an unlabeled batch.

    Layouts: ``(x, y, ...)`` or ``[x, y, ...]``; ``x`` or ``(x,)`` (unlabeled); a mapping. In a mapping the
    targets are under ``y`` / ``label`` / ``labels`` / ``targets``; the inputs are ``x`` / ``input`` when
    present, else every other entry: one entry gives its value (``{"pixel_values", "labels"}`` gives the
    pixel tensor), several give the mapping itself (``{"input_ids", "attention_mask", "labels"}`` gives
    ``{"input_ids", "attention_mask"}``, for ``model(**inputs)``; see :func:`forward_inputs`).

    Args:
        batch: what the dataloader yielded.
        require_targets: raise when the batch carries no targets.
        who: the caller's name, used in error messages.

    Raises:
        TypeError: the batch has none of the layouts above.
        ValueError: ``require_targets`` and the batch has no targets.
    """
    if isinstance(batch, Tensor):
        inputs, targets = batch, None
    elif isinstance(batch, Mapping):
        inputs, targets = _mapping_inputs(batch, who), _first(batch, TARGET_KEYS)
    elif isinstance(batch, (tuple, list)) and len(batch) >= 1:
        inputs, targets = batch[0], (batch[1] if len(batch) > 1 else None)
    else:
        raise TypeError(
            f"{who} cannot read a batch of type {type(batch).__name__}: expected a tensor, a tuple/list "
            "(inputs, targets, ...) or a dict with keys 'x' and 'y'. HINT: yield (inputs, targets) tuples."
        )
    if require_targets and targets is None:
        raise ValueError(
            f"{who} needs labelled batches (inputs, targets), got a batch without targets. "
            f"HINT: yield (inputs, targets) tuples, or a dict with an input and one of {list(TARGET_KEYS)}."
        )
    return inputs, targets


def move_to_device(data: Any, device: torch.device | str) -> Any:
    """``data`` with every tensor in it moved to ``device``: tensors, mappings, (named) tuples, lists.

    Other values (strings, numbers, None) come back unchanged. Mappings come back as plain dicts.
    """
    if isinstance(data, Tensor):
        return data.to(device)
    if isinstance(data, Mapping):
        return {k: move_to_device(v, device) for k, v in data.items()}
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # a namedtuple
        return type(data)(*(move_to_device(v, device) for v in data))
    if isinstance(data, (tuple, list)):
        return type(data)(move_to_device(v, device) for v in data)
    return data


def _accepts_keywords(model: Callable[..., Any], keys: list[str]) -> bool:
    forward = getattr(model, "forward", model)
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):  # no signature to read: trust the keywords
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return all(k in params for k in keys)


def forward_inputs(model: Callable[..., Any], inputs: Any) -> Any:
    """Call ``model`` with batch ``inputs``: a tensor as ``model(x)``, a tuple/list as ``model(*inputs)``,
    a mapping as ``model(**inputs)`` (a one-entry mapping whose key ``forward`` does not take: ``model(value)``).

    Raises:
        TypeError: a mapping whose keys ``forward`` does not take.
    """
    if isinstance(inputs, Mapping):
        keys = list(inputs)
        if _accepts_keywords(model, keys):
            return model(**inputs)
        if len(keys) == 1:
            return model(inputs[keys[0]])
        raise TypeError(
            f"The model's forward does not take the batch keys {keys} as keyword arguments. HINT: rename "
            "the keys to forward's parameters, or pass `batch_fn=` returning (model_inputs, labels)."
        )
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


@dataclass
class Batch:
    """One batch read for a model: ``inputs`` (tensor, tuple or mapping), ``targets`` (or None)."""

    inputs: Any
    targets: Tensor | None

    @property
    def attention_mask(self) -> Tensor | None:
        """The ``attention_mask`` entry of mapping inputs (``[B, T]``, 1 for tokens, 0 for padding), or None."""
        return self.inputs.get(MASK_KEY) if isinstance(self.inputs, Mapping) else None

    def to(self, device: torch.device | str) -> Batch:
        """The batch with every tensor of its inputs and targets on ``device``."""
        return Batch(move_to_device(self.inputs, device), move_to_device(self.targets, device))

    def forward(self, model: Callable[..., Any]) -> Any:
        """``model``'s output on these inputs (see :func:`forward_inputs`)."""
        return forward_inputs(model, self.inputs)


def read_batch(batch: Any, batch_fn: Callable[[Any], Any] | None = None, *, who: str = "This part") -> Batch:
    """Read a batch with :func:`split_batch`, or with a user ``batch_fn`` returning ``(model_inputs, targets)``.

    ``model_inputs`` may be a tensor, a tuple or a mapping; ``targets`` a tensor or None.

    Raises:
        TypeError: the batch has none of :func:`split_batch`'s layouts, or ``batch_fn`` did not return a pair.
    """
    if batch_fn is None:
        return Batch(*split_batch(batch, who=who))
    out = batch_fn(batch)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        got = f"a {len(out)}-tuple" if isinstance(out, (tuple, list)) else type(out).__name__
        raise TypeError(
            f"{who}: `batch_fn` must return (model_inputs, targets), got {got}. HINT: return a pair, with "
            "targets None for unlabeled data."
        )
    return Batch(out[0], out[1])


def _from_object(output: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)
        if isinstance(value, (tuple, list)) and value and key == "hidden_states":
            value = value[-1]
        if isinstance(value, Tensor):
            return value
    return None


def output_tensor(output: Any, keys: tuple[str, ...] = OUTPUT_KEYS, *, who: str = "This part") -> Tensor:
    """The tensor in a model or layer ``output``: itself, the first entry of a tuple/list, or the first of
    ``keys`` found in a dict or an object (``hidden_states`` gives its last layer).

    Raises:
        TypeError: no tensor found.
    """
    if isinstance(output, Tensor):
        return output
    found = _from_object(output, keys)
    if found is None and isinstance(output, (tuple, list)) and output:
        found = output[0] if isinstance(output[0], Tensor) else None
    if found is None and isinstance(output, Mapping):
        found = next((v for v in output.values() if isinstance(v, Tensor)), None)
    if found is None:
        raise TypeError(
            f"{who} found no tensor in an output of type {type(output).__name__}: expected a tensor, a tuple "
            f"whose first entry is a tensor, or a dict/object with one of {list(keys)}. HINT: hook a layer "
            "that returns a tensor."
        )
    return found
