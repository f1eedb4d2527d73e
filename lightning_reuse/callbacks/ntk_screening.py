"""NTKScreening: screen a model-reprogramming run before it trains, from the prompt-NTK spectrum.

NTK-based screening following Chung et al. 2025 ("Model Reprogramming Demystified: A Neural Tangent
Kernel Perspective", arXiv 2506.00620); score definitions from Arora et al. 2019 (arXiv 1901.08584).
Thin glue over :func:`lightning_reuse.functional.ntk_scores.screen_reprogramming`.

Example:
    >>> import torch, lightning.pytorch as pl
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from lightning_reuse.nn.label_mapping import FrequencyLabelMapping
    >>> from lightning_reuse.nn.prompts import PaddingPrompt
    >>> from lightning_reuse.nn.reprogrammed import ReprogrammedModel
    >>> from lightning_reuse.samples.models import SmallCNN
    >>> class Reprog(pl.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         torch.manual_seed(0)
    ...         self.model = ReprogrammedModel(
    ...             SmallCNN(width=4), PaddingPrompt((1, 6, 6), (1, 8, 8)), FrequencyLabelMapping(10, 3))
    ...     def training_step(self, batch, _):
    ...         return torch.nn.functional.cross_entropy(self.model(batch[0]), batch[1])
    ...     def configure_optimizers(self):
    ...         return torch.optim.Adam(self.model.trainable_parameters(), lr=0.01)
    >>> data = TensorDataset(torch.rand(60, 1, 6, 6), torch.arange(60) % 3)
    >>> screening = NTKScreening(num_samples=30, on_fail="stop", plot=False, progress_bar=False)
    >>> trainer = pl.Trainer(max_epochs=1, callbacks=[screening], logger=False, enable_checkpointing=False,
    ...                      enable_progress_bar=False, enable_model_summary=False)
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     trainer.fit(Reprog(), DataLoader(data, batch_size=20))
    >>> screening.scores.decision in ("PASS", "WARN", "FAIL")
    True
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from tqdm.auto import tqdm
from typing_extensions import override

from lightning_reuse._warnings import LightningReuseWarning
from lightning_reuse.callbacks._windows import measurement_window
from lightning_reuse.functional.ntk_config import ScreeningConfig, ScreeningThresholds, resolve_config
from lightning_reuse.functional.ntk_scores import ScreeningScores, screen_reprogramming
from lightning_reuse.nn.batch import split_batch

OnFail = Literal["warn", "stop"]
_OPTION_DEFAULTS: dict[str, Any] = {  # the screening options NTKScreening takes as keywords
    f.name: f.default for f in fields(ScreeningConfig) if f.default is not MISSING
}


class NTKScreeningWarning(LightningReuseWarning):
    """The NTK screening predicts that reprogramming will fail (decision FAIL)."""


def find_reprogrammed_model(module: nn.Module) -> nn.Module:
    """The first sub-module (``module`` itself included) with ``source``, ``transform`` and ``mapping``."""
    for sub in module.modules():
        if all(isinstance(getattr(sub, a, None), nn.Module) for a in ("source", "transform", "mapping")):
            return sub
    raise TypeError(
        f"NTKScreening needs a reprogrammed model inside the LightningModule: an nn.Module with `source`, "
        f"`transform` and `mapping` (e.g. lightning_reuse.nn.ReprogrammedModel, as in ModelReprogramming); "
        f"none found in {type(module).__name__}. HINT: remove the callback for other reuse strategies, or "
        "use lightning_reuse.functional.empirical_ntk directly."
    )


@contextmanager
def _untouched(module: nn.Module):
    """Restore RNG states (torch, CUDA, numpy, random) and every sub-module's train/eval mode."""
    modes = [(m, m.training) for m in module.modules()]
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002 (restore the global state)
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
        for m, mode in modes:
            m.training = mode


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """Every ``torch.Generator`` reachable from a data loader: its own, its sampler's, its batch sampler's."""
    found: list[torch.Generator] = []
    seen: set[int] = set()
    stack = [loader]
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Generator):
            found.append(obj)
            continue
        stack.extend(getattr(obj, a, None) for a in ("generator", "sampler", "batch_sampler"))
    return found


@contextmanager
def _generators_untouched(loader: Any):
    """Restore the state of every generator of ``loader`` (reading it must not change the batch order)."""
    saved = [(g, g.get_state()) for g in _loader_generators(loader)]
    try:
        yield
    finally:
        for g, state in saved:
            g.set_state(state)


def _fresh_batches(loader: Any) -> Iterator[Any]:
    """The batches of ``loader`` from an iterator of their own.

    With persistent workers, ``iter(loader)`` resets and returns the iterator the fit already created
    (and will read from); a new one is made instead, and its workers are shut down afterwards.
    """
    make = getattr(loader, "_get_iterator", None)
    if not (getattr(loader, "persistent_workers", False) and callable(make)):
        yield from loader
        return
    it = make()
    try:
        yield from it
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()


class NTKScreening(Callback):
    """Before the first training step, compute the prompt-NTK scores and a PASS/WARN/FAIL decision.

    Runs in ``on_train_start`` on a stratified subset of the training data (rank 0 computes, the
    result is broadcast), logs the scores (``ntk/rho``, ``ntk/e_tau``, ``ntk/r_eff``, guard values,
    ``ntk/decision`` 0/1/2) to every logger, the top-k spectrum as a PNG (and as a W&B line plot when a
    ``WandbLogger`` is attached), and measures its own cost in the ``"ntk-screening"`` window of an
    attached ``EnergyMonitor``. Model parameters, gradients, RNG states and train/eval modes are left
    as they were, and so is the training batch order (the generators of the train loader and of its
    sampler are restored after the subset is read, which never uses the fit's own iterator). On FAIL it warns (``on_fail="warn"``) or warns
    and stops the fit (``"stop"``; the fit ends before the first step unless
    ``min_epochs``/``min_steps`` forbid it).

    The screening options are those of :class:`~lightning_reuse.functional.ScreeningConfig`, declared and
    validated there once: pass them as keywords (as below) or as one ``config=ScreeningConfig(...)``, not
    both. The callback checks only its own options (``on_fail``, ``max_pool``).

    Args:
        num_samples: Size of the stratified subset (the spec's default 512).
        on_fail: ``"warn"`` or ``"stop"``.
        label_mapping: ``"flm"`` (frequency mapping on the subset, the start of FLM/ILM training) or
            ``"model"`` (the module's mapping as it is).
        pseudo: Use the ``n x n`` pseudo-NTK (for many target classes).
        sketch: ``"auto"``, ``"none"``, ``"gaussian"`` or ``"countsketch"``.
        sketch_dim: Sketch columns.
        batch_size: Samples per forward/backward pass.
        top_k: Eigenvalues computed, logged and used by ``E(tau)``.
        num_permutations: Label permutations of ``rho``.
        eps: Ridge of ``rho`` (times ``lam_bar``).
        tau: Time of ``E(tau)`` (units of ``1/lam_bar``).
        thresholds: Decision thresholds (default :class:`~lightning_reuse.ScreeningThresholds`).
        seed: Seed of the subset, the sketch and the permutations.
        max_pool: Samples read from the train loader before subsampling (default ``4 * num_samples``).
        plot: Save ``ntk_spectrum.png`` (in the trainer's log dir) and send it to image-capable loggers.
        progress_bar: Show a progress bar (only when the trainer shows one).
        max_exact_entries: Largest exact feature matrix kept by ``sketch="auto"``.
        max_exact: Exact spectrum up to this size (Gram matrix of the features), else randomized top-k.
        baselines: Also report the field's cheap baselines beside the NTK score, from the same pass
            (``scores.baselines``, logged as ``ntk/baseline/<name>``): the zero-step accuracy (through the screening's head), a
            cross-fitted linear probe and LogME on the source logits.
        config: Every screening option at once, instead of the keywords above.
    """

    def __init__(
        self,
        num_samples: int = ScreeningConfig.num_samples,
        on_fail: OnFail = "warn",
        label_mapping: Literal["flm", "model"] = ScreeningConfig.label_mapping,
        pseudo: bool = ScreeningConfig.pseudo,
        sketch: Literal["auto", "none", "gaussian", "countsketch"] = ScreeningConfig.sketch,
        sketch_dim: int = ScreeningConfig.sketch_dim,
        batch_size: int = ScreeningConfig.batch_size,
        top_k: int = ScreeningConfig.top_k,
        num_permutations: int = ScreeningConfig.num_permutations,
        eps: float = ScreeningConfig.eps,
        tau: float = ScreeningConfig.tau,
        thresholds: ScreeningThresholds | None = None,
        seed: int = ScreeningConfig.seed,
        max_pool: int | None = None,
        plot: bool = True,
        progress_bar: bool = True,
        max_exact_entries: int = ScreeningConfig.max_exact_entries,
        max_exact: int = ScreeningConfig.max_exact,
        baselines: bool = ScreeningConfig.baselines,
        config: ScreeningConfig | None = None,
    ) -> None:
        options = {k: v for k, v in locals().items() if k in _OPTION_DEFAULTS and v != _OPTION_DEFAULTS[k]}
        if thresholds is not None:
            options["thresholds"] = thresholds
        self.config = resolve_config(config, options, "NTKScreening")
        if on_fail not in ("warn", "stop"):
            raise ValueError(
                f"`on_fail` must be one of ('warn', 'stop'), got {on_fail!r}. HINT: pass on_fail='warn' to "
                "train anyway or 'stop' to end the fit before its first step."
            )
        if max_pool is not None and (
            isinstance(max_pool, bool) or not isinstance(max_pool, int) or max_pool < 1
        ):
            raise ValueError(
                f"`max_pool` must be an int >= 1 or None, got {max_pool!r}. "
                "HINT: leave it out to read 4 x num_samples samples."
            )
        self.on_fail, self.plot, self.progress_bar = on_fail, plot, progress_bar
        self.max_pool = max_pool or 4 * self.config.num_samples
        self.scores: ScreeningScores | None = None
        self.energy: Any = None
        self.plot_path: Path | None = None

    @property
    def thresholds(self) -> ScreeningThresholds:
        """The decision thresholds (``config.thresholds``)."""
        return self.config.thresholds

    # ------------------------------------------------------------------ hooks
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.scores is not None:  # restored from a checkpoint: the decision was already made
            return
        model = find_reprogrammed_model(pl_module)
        with measurement_window(trainer, "ntk-screening") as record, _untouched(pl_module):
            result: dict[str, Any] | Exception | None = None
            if trainer.is_global_zero:
                try:
                    result = self._screen(trainer, model, pl_module.device)
                except (TypeError, ValueError) as err:  # inputs it refuses: every rank raises, none waits
                    result = err
            result = trainer.strategy.broadcast(result, src=0)
        if isinstance(result, Exception):
            raise result
        self.energy = record
        self.scores = ScreeningScores(**result)
        self._log(trainer)
        self._act(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"scores": None if self.scores is None else self.scores.as_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        s = state_dict.get("scores")
        self.scores = None if s is None else ScreeningScores(**s)

    # ------------------------------------------------------------------ work
    def _collect(self, trainer: pl.Trainer, device: torch.device) -> tuple[Tensor, Tensor]:
        loader = trainer.train_dataloader
        if isinstance(loader, (list, tuple)):
            loader = loader[0]
        elif isinstance(loader, dict):
            loader = next(iter(loader.values()))
        xs, ys, count = [], [], 0
        # The global RNG states are restored by `_untouched`; the loader's own generators (a shuffled
        # DataLoader's `generator`, its sampler's) here, and the fit's own iterator is not read from.
        with _generators_untouched(loader), closing(_fresh_batches(loader)) as batches:
            for batch in batches:
                x, y = split_batch(batch, require_targets=True, who="NTKScreening")
                xs.append(x)
                ys.append(y)
                count += len(y)
                if count >= self.max_pool:
                    break
        return torch.cat(xs).to(device), torch.cat(ys).to(device).long()

    def _screen(self, trainer: pl.Trainer, model: nn.Module, device: torch.device) -> dict[str, Any]:
        x, y = self._collect(trainer, device)
        n = min(self.config.num_samples, len(y))  # the subset keeps every sample when the pool is smaller
        show = self.progress_bar and trainer.progress_bar_callback is not None
        bar = None
        if show:
            bar = tqdm(total=n, desc="NTK screening", unit="sample", leave=False)
        try:
            progress = None if bar is None else (lambda done: bar.update(done - bar.n))
            scores = screen_reprogramming(model, x, y, config=self.config, progress=progress)
        finally:
            if bar is not None:
                bar.close()
        return scores.as_dict()

    def _log(self, trainer: pl.Trainer) -> None:
        assert self.scores is not None
        s = self.scores
        rank_zero_info(f"NTK screening: {s.decision} ({'; '.join(s.reasons)})")
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(s.metrics(), step=trainer.global_step)
        if self.plot:
            self.plot_path = self._plot(trainer)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                import wandb

                table = wandb.Table(
                    data=[[i + 1, v / s.lam_bar] for i, v in enumerate(s.eigenvalues)],
                    columns=["index", "eigenvalue / lam_bar"],
                )
                payload: dict[str, Any] = {
                    "ntk/spectrum": wandb.plot.line(
                        table, "index", "eigenvalue / lam_bar", title=f"NTK top-{len(s.eigenvalues)} spectrum"
                    )
                }
                if s.baselines:
                    payload["ntk/baselines"] = wandb.Table(
                        data=[["ntk_score", s.ntk_score], *([k, v] for k, v in s.baselines.items())],
                        columns=["score", "value"],
                    )
                if self.plot_path is not None:
                    payload["ntk/spectrum_png"] = wandb.Image(str(self.plot_path))
                logger.experiment.log(payload)
            elif type(logger).__name__ == "TensorBoardLogger" and self.plot_path is not None:
                logger.experiment.add_figure("ntk/spectrum", self._figure(), trainer.global_step)

    def _figure(self) -> Any:
        from matplotlib.figure import Figure

        s = self.scores
        assert s is not None
        fig = Figure(figsize=(5, 3.2))
        ax = fig.subplots()
        ev = np.asarray(s.eigenvalues) / s.lam_bar
        ax.semilogy(np.arange(1, len(ev) + 1), np.clip(ev, 1e-12, None), marker=".")
        ax.set_xlabel("index")
        ax.set_ylabel("eigenvalue / mean eigenvalue")
        ax.set_title(f"NTK spectrum: {s.decision}, rho={s.rho:.3f}, E={s.e_tau:.2f}", fontsize=9)
        fig.tight_layout()
        return fig

    def _plot(self, trainer: pl.Trainer) -> Path:
        fig = self._figure()
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "ntk_spectrum.png"
        fig.savefig(path, dpi=100)
        return path

    def _act(self, trainer: pl.Trainer) -> None:
        s = self.scores
        assert s is not None
        if s.decision != "FAIL":
            return
        action = "stopping the fit" if self.on_fail == "stop" else "training continues"
        if s.degenerate:
            what = "NTK screening cannot vouch for this data"
            fix = (
                "train on several labelled samples of at least two classes (check the train loader's labels)"
            )
        else:
            what = "NTK screening predicts that reprogramming will fail"
            fix = "pick another source model or a different prompt/label mapping"
        if trainer.is_global_zero:
            warnings.warn(
                f"{what} ({action}): {'; '.join(s.reasons)}. HINT: {fix}; set on_fail='warn' to train anyway.",
                NTKScreeningWarning,
                stacklevel=2,
            )
        if self.on_fail == "stop":
            trainer.should_stop = True
