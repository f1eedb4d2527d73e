"""The ``lightning-reuse`` console script.

- ``lightning-reuse demo [--out DIR] [--quick] ...``: the end-to-end "reuse or retrain?" report.
- ``lightning-reuse fit|validate|test|predict --config recipes/X.yaml``: LightningCLI with every
  lightning_reuse callback, module and optimizer available by ``class_path``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lightning_reuse.demo.config import DemoConfig
from lightning_reuse.demo.pipeline import run_demo


def _demo_parser(defaults: DemoConfig) -> argparse.ArgumentParser:
    """The arguments of ``lightning-reuse demo``, with ``defaults`` as their defaults."""
    p = argparse.ArgumentParser(
        prog="lightning-reuse demo", description="Reuse or retrain? End-to-end demo on digits."
    )
    p.add_argument(
        "--out", default=defaults.out_dir, help="parent folder of the report (a new run-* folder each time)"
    )
    p.add_argument(
        "--shift",
        default=defaults.shift,
        help="shift of the new data (noise, blur, salt_pepper, rotation, inversion)",
    )
    p.add_argument("--level", type=float, default=defaults.level, help="shift strength")
    p.add_argument("--epochs", type=int, default=defaults.max_epochs, help="epochs per strategy")
    p.add_argument(
        "--train-limit", type=int, default=defaults.train_limit, help="labelled new samples for training"
    )
    p.add_argument(
        "--strategies", nargs="+", default=None, help="names of the strategies to run (default: all)"
    )
    p.add_argument(
        "--country", default=defaults.country_iso_code, help="ISO country code for carbon intensity"
    )
    p.add_argument("--no-wandb", action="store_true", help="do not write the offline W&B run")
    p.add_argument("--quick", action="store_true", help="reduced configuration (seconds; for smoke tests)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    return p


def _demo(argv: Sequence[str]) -> int:
    a = _demo_parser(DemoConfig()).parse_args(list(argv))
    run_demo(
        DemoConfig(
            out_dir=a.out,
            shift=a.shift,
            level=a.level,
            max_epochs=a.epochs,
            train_limit=a.train_limit,
            strategies=a.strategies,
            country_iso_code=a.country,
            wandb=not a.no_wandb,
            quick=a.quick,
            seed=a.seed,
        )
    )
    return 0


def cli_main(args: Sequence[str] | None = None, run: bool = True) -> object:
    """LightningCLI over any LightningModule / DataModule (``class_path`` in YAML recipes)."""
    # LightningCLI calls jsonargparse APIs that newer jsonargparse flags as deprecated; users cannot act on it.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    # third-party, imported after the variable above is set (jsonargparse reads it on import)
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    return LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if args is None else list(args),
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf"} if _has_omegaconf() else None,
    )


def _has_omegaconf() -> bool:
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: ``lightning-reuse demo ...`` or a LightningCLI subcommand."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        return _demo(argv[1:])
    cli_main(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
