"""The end-to-end "reuse or retrain?" demo (``lightning-reuse demo``), split by stage.

- :mod:`~lightning_reuse.demo.config`: :class:`DemoConfig` and the run folder.
- :mod:`~lightning_reuse.demo.data`: the new data (shifted digits) and the pre-trained source.
- :mod:`~lightning_reuse.demo.strategies`: the reuse strategies compared.
- :mod:`~lightning_reuse.demo.training`: one measured fit of one strategy.
- :mod:`~lightning_reuse.demo.resque_pass`, :mod:`~lightning_reuse.demo.calibration`,
  :mod:`~lightning_reuse.demo.resque_stage`: the RESQUE score and the ledger's cost prediction.
- :mod:`~lightning_reuse.demo.ntk_stage`: NTK screening of reprogramming.
- :mod:`~lightning_reuse.demo.recommend`: the choice and its reasons.
- :mod:`~lightning_reuse.demo.plots`, :mod:`~lightning_reuse.demo.report`: report.md, PNGs, W&B, table.
- :mod:`~lightning_reuse.demo.run_state`, :mod:`~lightning_reuse.demo.resume`: a status per stage in
  ``summary.json``, interrupts (:class:`DemoInterrupted`), and ``--resume`` (:class:`ResumeError`).
- :mod:`~lightning_reuse.demo.pipeline`: ``run_demo``, which runs the stages in order (or resumes a run).
"""

from typing import TYPE_CHECKING

from lightning_reuse._lazy import attach

# Public name -> defining module (relative), resolved on first use.
_NAMES: dict[str, str] = {
    "DemoConfig": ".config",
    "DemoInterrupted": ".run_state",
    "ResumeError": ".resume",
    "run_demo": ".pipeline",
}

if TYPE_CHECKING:
    from lightning_reuse.demo.config import DemoConfig
    from lightning_reuse.demo.pipeline import run_demo
    from lightning_reuse.demo.resume import ResumeError
    from lightning_reuse.demo.run_state import DemoInterrupted

__all__ = ["DemoConfig", "DemoInterrupted", "ResumeError", "run_demo"]
__getattr__, __dir__ = attach(__name__, _NAMES)
