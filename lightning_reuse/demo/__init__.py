"""The end-to-end "reuse or retrain?" demo (``lightning-reuse demo``)."""

from lightning_reuse.demo.pipeline import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
