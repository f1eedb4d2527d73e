"""File fixtures: ``read_only_file`` makes a file read-only for real (a fault tests must produce, not mock)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


class ReadOnly:
    """``read_only(path)`` makes ``path`` read-only; ``read_only.undo(path)`` makes it writable again.

    Ordinary users get a file mode; root ignores file modes, so as root the file is made immutable with
    ``chattr +i`` (the test is skipped, with the reason, on a filesystem without it).
    """

    def __init__(self) -> None:
        self.made: list[Path] = []

    def __call__(self, path: Path) -> None:
        if os.geteuid() != 0:
            path.chmod(0o444)
        elif (
            not shutil.which("chattr")
            or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode
        ):
            pytest.skip(
                "running as root on a filesystem without `chattr +i`: no way to make a file read-only"
            )
        self.made.append(path)

    def undo(self, path: Path) -> None:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=False)
        path.chmod(0o644)


@pytest.fixture
def read_only_file() -> Iterator[ReadOnly]:
    """A :class:`ReadOnly`; every file it made read-only is writable again after the test."""
    read_only = ReadOnly()
    yield read_only
    for path in read_only.made:
        read_only.undo(path)
