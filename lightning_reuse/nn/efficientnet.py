"""Deprecated alias: ``lightning_reuse.nn.efficientnet`` moved to :mod:`lightning_reuse.samples.efficientnet` (this alias goes in the next release)."""

from lightning_reuse._lazy import moved_module

__getattr__ = moved_module(__name__, "lightning_reuse.samples.efficientnet")
