"""One way to read a batch: ``split_batch`` turns what a dataloader yields into ``(inputs, targets)``.

Every part that reads user batches (the pre-check callbacks, the LightningModules) goes through here, so a
batch layout that works for one part works for all of them.

Example:
    >>> import torch
    >>> x, y = torch.zeros(4, 3), torch.tensor([0, 1, 0, 1])
    >>> split_batch((x, y))[1].tolist(), split_batch(x)[1], split_batch({"x": x, "y": y})[0].shape
    ([0, 1, 0, 1], None, torch.Size([4, 3]))
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

INPUT_KEYS: tuple[str, ...] = ("x", "input")
TARGET_KEYS: tuple[str, ...] = ("y", "label")


def _first(batch: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((batch[k] for k in keys if k in batch), None)


def split_batch(
    batch: Any, *, require_targets: bool = False, who: str = "This part"
) -> tuple[Any, Tensor | None]:
    """Return ``(inputs, targets)`` of a batch; ``targets`` is None for an unlabeled batch.

    Layouts: ``(x, y, ...)`` or ``[x, y, ...]``; ``x`` or ``(x,)`` (unlabeled); a dict with an input key
    (``x`` / ``input``) and optionally a target key (``y`` / ``label``).

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
    elif isinstance(batch, dict):
        inputs, targets = _first(batch, INPUT_KEYS), _first(batch, TARGET_KEYS)
        if inputs is None:
            raise TypeError(
                f"{who} found no input key in a dict batch: expected one of {list(INPUT_KEYS)}, got keys "
                f"{sorted(batch)}. HINT: yield (inputs, targets) tuples, or a dict with keys 'x' and 'y'."
            )
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
            "HINT: yield (inputs, targets) tuples, or a dict with keys 'x' and 'y'."
        )
    return inputs, targets
