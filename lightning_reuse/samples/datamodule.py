"""``DigitsDataModule``: the embedded default data as a LightningDataModule (usable from YAML recipes).

Example:
    >>> dm = DigitsDataModule(shift="noise", level=0.3, batch_size=32)
    >>> dm.setup("fit")
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> tuple(x.shape), len(dm.train_set) + len(dm.val_set) + len(dm.test_set)
    ((32, 1, 8, 8), 1797)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_reuse.samples.digits import SHIFTS, apply_shift, load_digits_tensors, split_indices


class DigitsDataModule(pl.LightningDataModule):
    """scikit-learn digits with a seeded train/val/test split, an optional shift and class subset.

    Args:
        shift: one of ``lightning_reuse.samples.digits.SHIFTS`` applied to every split (the "new data").
        level: shift strength (see :func:`lightning_reuse.samples.digits.apply_shift`).
        classes: keep only these digits, relabelled ``0..len(classes)-1`` in the given order.
        fractions: train / val / test fractions of the (class-filtered) data.
        batch_size: batch size of every loader.
        seed: seed of the shift noise and of the training shuffle.
        split_seed: seed of the train/val/test split. Keep the default 0 with the sources of
            :mod:`lightning_reuse.samples.zoo`: they were pre-trained on this split's training part only, so its
            validation and test parts are unseen by them.
        train_limit: keep only the first ``train_limit`` training samples (a "small new dataset").
    """

    def __init__(
        self,
        shift: str = "none",
        level: float = 0.0,
        classes: Sequence[int] | None = None,
        fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
        batch_size: int = 64,
        seed: int = 0,
        train_limit: int | None = None,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        if shift not in SHIFTS:
            raise ValueError(f"`shift` must be one of {SHIFTS}, got {shift!r}.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        if classes is not None and (len(set(classes)) != len(classes) or not set(classes) <= set(range(10))):
            raise ValueError(f"`classes` must be distinct digits in 0..9, got {list(classes)}.")
        self.shift, self.level, self.classes = shift, level, None if classes is None else list(classes)
        self.fractions, self.batch_size, self.seed, self.train_limit = (
            tuple(fractions),
            batch_size,
            seed,
            train_limit,
        )
        self.split_seed = split_seed
        self.save_hyperparameters()

    @property
    def num_classes(self) -> int:
        return 10 if self.classes is None else len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "train_set", None) is not None:
            return
        x, y = load_digits_tensors()
        if self.classes is not None:
            keep = torch.isin(y, torch.tensor(self.classes))
            x, y = x[keep], y[keep]
            remap = torch.full((10,), -1, dtype=torch.long)
            remap[torch.tensor(self.classes)] = torch.arange(len(self.classes))
            y = remap[y]
        x = apply_shift(x, self.shift, self.level, seed=self.seed)
        tr, va, te = split_indices(len(x), self.fractions, seed=self.split_seed)
        if self.train_limit is not None:
            tr = tr[: self.train_limit]
        self.train_set = TensorDataset(x[tr], y[tr])
        self.val_set = TensorDataset(x[va], y[va])
        self.test_set = TensorDataset(x[te], y[te])

    def _loader(self, ds: TensorDataset, shuffle: bool) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, generator=gen)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class DigitsLoader(DataLoader):
    """A ``DataLoader`` over one split of :class:`DigitsDataModule` (for callbacks configured from YAML).

    Example:
        >>> loader = DigitsLoader(shift="blur", level=1.0, split="val", batch_size=100)
        >>> len(loader.dataset)
        359
    """

    def __init__(
        self,
        shift: str = "none",
        level: float = 0.0,
        split: Literal["train", "val", "test"] = "train",
        batch_size: int = 64,
        seed: int = 0,
        train_limit: int | None = None,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"`split` must be 'train', 'val' or 'test', got {split!r}.")
        dm = DigitsDataModule(
            shift=shift, level=level, batch_size=batch_size, seed=seed, train_limit=train_limit
        )
        dm.setup("fit")
        super().__init__(getattr(dm, f"{split}_set"), batch_size=batch_size, shuffle=False)
