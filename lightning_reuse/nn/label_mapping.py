"""Label mappings ``L``: from the ``K_s`` logits of a frozen source model to ``C`` target-class logits.

- :class:`RandomLabelMapping` (RLM): a fixed random one-to-one assignment (a weak baseline).
- :class:`FrequencyLabelMapping` (FLM): count the source's top-1 predictions on (prompted) target training
  data per target class, then assign greedily one-to-one by largest count.
- :class:`IterativeLabelMapping` (ILM): FLM recomputed every ``remap_every`` epochs under the current prompt
  (ILM-VP's default; the schedule is driven by the training loop, e.g. ``ModelReprogramming``).
- :class:`LinearLabelMapping`: a learned fully connected layer on the source logits.

One-to-one mappings select logits, ``g = f_s[:, mapping]``; all mappings expose the matrix form
``g = L f_s (+ b)`` through :meth:`LabelMapping.matrix` (``[C, K_s]``).

Reference: Chen, Liu, Li, Zhang, Wang, Liu, "Understanding and Improving Visual Prompting: A Label-Mapping
Perspective", CVPR 2023 (RLM / FLM / ILM).

Example:
    >>> import torch
    >>> flm = FrequencyLabelMapping(num_source=5, num_target=2)
    >>> source_pred = torch.tensor([3, 3, 1, 1, 1, 4])
    >>> target = torch.tensor([0, 0, 1, 1, 0, 1])
    >>> flm.fit(source_pred, target).tolist()  # class 0 -> source 3, class 1 -> source 1
    [3, 1]
    >>> flm(torch.arange(10.0).view(2, 5))
    tensor([[3., 1.],
            [8., 6.]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _check_sizes(num_source: int, num_target: int, one_to_one: bool) -> None:
    if num_source < 1 or num_target < 1:
        raise ValueError(f"`num_source` and `num_target` must be >= 1, got {num_source} and {num_target}.")
    if one_to_one and num_target > num_source:
        raise ValueError(
            f"A one-to-one label mapping needs num_target <= num_source, got num_target={num_target} target "
            f"classes for num_source={num_source} source classes. HINT: use LinearLabelMapping, or a source "
            "model with more output classes."
        )


def count_matrix(source_pred: Tensor, target: Tensor, num_source: int, num_target: int) -> Tensor:
    """Counts ``N[c, k]`` = number of samples of target class ``c`` whose source top-1 prediction is ``k``.

    Args:
        source_pred: ``[N]`` int source predictions in ``[0, num_source)`` (or ``[N, K_s]`` logits: argmax).
        target: ``[N]`` int target labels in ``[0, num_target)``.

    Returns:
        ``[num_target, num_source]`` int64 count matrix.
    """
    if source_pred.dim() == 2:
        source_pred = source_pred.argmax(-1)
    source_pred, target = source_pred.long().flatten(), target.long().flatten()
    if source_pred.numel() != target.numel():
        raise ValueError(
            f"`source_pred` and `target` need one entry per sample, got {source_pred.numel()} and {target.numel()}."
        )
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_target):
        raise ValueError(
            f"`target` labels must lie in [0, {num_target}), got range [{int(target.min())}, "
            f"{int(target.max())}]. HINT: check `num_target` (the number of target classes)."
        )
    if source_pred.numel() and (int(source_pred.min()) < 0 or int(source_pred.max()) >= num_source):
        raise ValueError(f"`source_pred` must lie in [0, {num_source}), got max {int(source_pred.max())}.")
    flat = target * num_source + source_pred
    return torch.bincount(flat, minlength=num_target * num_source).view(num_target, num_source)


def greedy_one_to_one(counts: Tensor) -> Tensor:
    """Greedy one-to-one assignment on a ``[C, K_s]`` score matrix: repeatedly take the largest remaining entry.

    Each step picks ``(c, k) = argmax counts`` over free rows and columns, assigns target ``c`` to source
    ``k``, and removes row ``c`` and column ``k``. Ties go to the smallest source index ``k``, then the smallest
    target ``c`` (as ILM-VP's argmax over its source-by-target matrix). Returns ``mapping: [C]`` int64 with
    ``mapping[c] = k`` (distinct entries).
    """
    if counts.dim() != 2:
        raise ValueError(f"`counts` must be a [C, K_s] matrix, got shape {list(counts.shape)}.")
    num_target, num_source = counts.shape
    _check_sizes(num_source, num_target, one_to_one=True)
    work = counts.detach().to(torch.float64).T.contiguous()  # [K_s, C]: argmax ties -> smallest k, then c
    neg = torch.tensor(float("-inf"), dtype=work.dtype)
    mapping = torch.empty(num_target, dtype=torch.long)
    for _ in range(num_target):
        k, c = divmod(int(torch.argmax(work)), num_target)
        mapping[c] = k
        work[k, :] = neg
        work[:, c] = neg
    return mapping


class LabelMapping(nn.Module):
    """Base class: ``forward(source_logits [N, K_s]) -> target_logits [N, C]``."""

    #: whether :meth:`fit` computes the mapping from data (FLM, ILM)
    data_driven: bool = False

    def __init__(self, num_source: int, num_target: int) -> None:
        super().__init__()
        self.num_source, self.num_target = int(num_source), int(num_target)

    def check_logits(self, source_logits: Tensor) -> None:
        """Raise ``ValueError`` unless ``source_logits`` is ``[N, num_source]``."""
        if source_logits.dim() != 2 or source_logits.shape[1] != self.num_source:
            raise ValueError(
                f"{type(self).__name__} expects source logits [N, {self.num_source}], got "
                f"{list(source_logits.shape)}. HINT: `num_source` must equal the source model's number of outputs."
            )

    def matrix(self) -> Tensor:  # pragma: no cover - abstract
        """The mapping as a ``[C, K_s]`` matrix ``L`` (``g = L f_s`` up to a constant bias)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"num_source={self.num_source}, num_target={self.num_target}"


class OneToOneLabelMapping(LabelMapping):
    """Target class ``c`` reads the source logit ``mapping[c]`` (distinct source classes); nothing trains.

    Args:
        num_source: ``K_s``, the number of source outputs.
        num_target: ``C``, the number of target classes (``<= K_s``).
        mapping: initial assignment ``[C]`` (default ``0, 1, ..., C-1``).
    """

    mapping: Tensor

    def __init__(
        self, num_source: int, num_target: int, mapping: Sequence[int] | Tensor | None = None
    ) -> None:
        super().__init__(num_source, num_target)
        _check_sizes(self.num_source, self.num_target, one_to_one=True)
        init = (
            torch.arange(self.num_target) if mapping is None else torch.as_tensor(mapping, dtype=torch.long)
        )
        self.register_buffer("mapping", self._validated(init))

    def _validated(self, mapping: Tensor) -> Tensor:
        mapping = mapping.detach().long().flatten().cpu()
        if mapping.numel() != self.num_target or len(set(mapping.tolist())) != self.num_target:
            raise ValueError(
                f"`mapping` must hold {self.num_target} distinct source indices, got {mapping.tolist()}."
            )
        if int(mapping.min()) < 0 or int(mapping.max()) >= self.num_source:
            raise ValueError(f"`mapping` entries must lie in [0, {self.num_source}), got {mapping.tolist()}.")
        return mapping

    def set_mapping(self, mapping: Tensor) -> Tensor:
        """Replace the assignment in place (keeps the buffer's device); returns it."""
        self.mapping.copy_(self._validated(mapping).to(self.mapping.device))
        return self.mapping

    def forward(self, source_logits: Tensor) -> Tensor:
        self.check_logits(source_logits)
        return source_logits[:, self.mapping]

    def matrix(self) -> Tensor:
        eye = torch.zeros(self.num_target, self.num_source, device=self.mapping.device)
        eye[torch.arange(self.num_target, device=eye.device), self.mapping] = 1.0
        return eye


class RandomLabelMapping(OneToOneLabelMapping):
    """RLM: a fixed random one-to-one assignment drawn with ``seed`` (ILM-VP's weak baseline).

    Example:
        >>> RandomLabelMapping(1000, 3, seed=0).mapping.tolist() == RandomLabelMapping(1000, 3, seed=0).mapping.tolist()
        True
    """

    def __init__(self, num_source: int, num_target: int, seed: int = 0) -> None:
        _check_sizes(int(num_source), int(num_target), one_to_one=True)
        perm = torch.randperm(int(num_source), generator=torch.Generator().manual_seed(seed))
        super().__init__(num_source, num_target, perm[: int(num_target)])


class FrequencyLabelMapping(OneToOneLabelMapping):
    """FLM: greedy one-to-one assignment on the count matrix of source top-1 predictions per target class.

    Call :meth:`fit` with the source's predictions (or logits) on prompted target training data. Before the
    first ``fit`` the assignment is ``0, ..., C-1``. ``counts`` holds the last count matrix.
    """

    data_driven = True
    counts: Tensor

    def __init__(self, num_source: int, num_target: int) -> None:
        super().__init__(num_source, num_target)
        self.register_buffer("counts", torch.zeros(self.num_target, self.num_source, dtype=torch.long))
        self.num_fits = 0

    def fit_counts(self, counts: Tensor) -> Tensor:
        """Set the assignment from a ``[C, K_s]`` count matrix (e.g. summed over DDP ranks); returns it."""
        if tuple(counts.shape) != (self.num_target, self.num_source):
            raise ValueError(
                f"`counts` must be [{self.num_target}, {self.num_source}], got {list(counts.shape)}."
            )
        self.counts.copy_(counts.detach().long().to(self.counts.device))
        self.num_fits += 1
        return self.set_mapping(greedy_one_to_one(counts.detach().cpu()))

    def fit(self, source_pred: Tensor, target: Tensor) -> Tensor:
        """Count ``source_pred`` (``[N]`` top-1 or ``[N, K_s]`` logits) against ``target`` and re-assign."""
        return self.fit_counts(
            count_matrix(source_pred.cpu(), target.cpu(), self.num_source, self.num_target)
        )


class IterativeLabelMapping(FrequencyLabelMapping):
    """ILM: FLM recomputed under the current prompt every ``remap_every`` epochs (ILM-VP default: 1).

    The nn module holds the schedule (:meth:`due`); the training loop calls :meth:`fit` when it is due.
    """

    def __init__(self, num_source: int, num_target: int, remap_every: int = 1) -> None:
        super().__init__(num_source, num_target)
        if int(remap_every) < 1:
            raise ValueError(
                f"`remap_every` must be an int >= 1 (epochs between re-mappings), got {remap_every}."
            )
        self.remap_every = int(remap_every)

    def due(self, epoch: int) -> bool:
        """Whether a re-mapping is scheduled at the start of (0-based) ``epoch``."""
        return epoch % self.remap_every == 0

    def extra_repr(self) -> str:
        return super().extra_repr() + f", remap_every={self.remap_every}"


class LinearLabelMapping(LabelMapping):
    """A learned fully connected mapping ``g = W f_s + b`` (``C`` may exceed ``K_s``).

    Example:
        >>> import torch
        >>> m = LinearLabelMapping(5, 7)
        >>> m(torch.zeros(3, 5)).shape, m.matrix().shape
        (torch.Size([3, 7]), torch.Size([7, 5]))
    """

    def __init__(self, num_source: int, num_target: int, bias: bool = True) -> None:
        super().__init__(num_source, num_target)
        _check_sizes(self.num_source, self.num_target, one_to_one=False)
        self.linear = nn.Linear(self.num_source, self.num_target, bias=bias)

    def forward(self, source_logits: Tensor) -> Tensor:
        self.check_logits(source_logits)
        return self.linear(source_logits)

    def matrix(self) -> Tensor:
        return self.linear.weight
