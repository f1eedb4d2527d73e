"""Optimizers: FTP (Fast Trainable Projection) and its baselines (no lightning import)."""

from typing import TYPE_CHECKING

from lightning_reuse._lazy import attach

# Public name -> defining module (relative). Add one line per public name.
_NAMES: dict[str, str] = {
    "FTP": ".ftp",
    "FTPAdamW": ".ftp_presets",
    "FTPSGD": ".ftp_presets",
    "configure_ftp": ".ftp_presets",
    "L2SP": ".l2sp",
    "l2sp_penalty": ".l2sp",
    "missing_from": ".anchors",
    "interpolate_state_dicts": ".anchors",
}

if TYPE_CHECKING:
    from lightning_reuse.optim.anchors import interpolate_state_dicts, missing_from
    from lightning_reuse.optim.ftp import FTP
    from lightning_reuse.optim.ftp_presets import FTPSGD, FTPAdamW, configure_ftp
    from lightning_reuse.optim.l2sp import L2SP, l2sp_penalty

__all__ = [
    "FTP",
    "FTPAdamW",
    "FTPSGD",
    "configure_ftp",
    "L2SP",
    "l2sp_penalty",
    "missing_from",
    "interpolate_state_dicts",
]
__getattr__, __dir__ = attach(__name__, _NAMES)
