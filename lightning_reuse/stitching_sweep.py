"""Deprecated alias: ``lightning_reuse.stitching_sweep`` moved to :mod:`lightning_reuse.modules.stitching_sweep` (this alias goes in the next release)."""

from lightning_reuse._lazy import moved_module

__getattr__ = moved_module(__name__, "lightning_reuse.modules.stitching_sweep")
