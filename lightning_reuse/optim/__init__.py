"""Optimizers: FTP (Fast Trainable Projection) and its baselines (no lightning import)."""

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

__all__ = list(_NAMES)
__getattr__, __dir__ = attach(__name__, _NAMES)
