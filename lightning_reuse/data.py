"""Deprecated alias: ``lightning_reuse.data`` moved to :mod:`lightning_reuse.samples.datamodule` (this alias goes in the next release)."""

from lightning_reuse._lazy import moved_module

__getattr__ = moved_module(__name__, "lightning_reuse.samples.datamodule")
