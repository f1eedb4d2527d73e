"""Without codecarbon (a GPU image that measures through NVML only), a bad country code is still refused.

"codecarbon not importable" is simulated for real: a fresh interpreter with ``sys.modules["codecarbon"] =
None`` set before lightning_reuse is imported (``import codecarbon`` then raises ``ImportError`` and
``importlib.util.find_spec`` finds nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lightning_reuse.energy.countries import ISO_3166_ALPHA3, is_iso_alpha3

REPO_ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = """
import json, sys
sys.modules["codecarbon"] = None  # before anything can import it
import importlib.util
out = {"find_spec": importlib.util.find_spec("codecarbon") is not None}
try:
    import codecarbon
    out["import"] = "ok"
except ImportError:
    out["import"] = "ImportError"
from lightning_reuse.callbacks.energy_monitor import EnergyMonitor
from lightning_reuse.energy import EnergyConfig
errors = {}
for code in ("ZZZ", "XYZ", "UK", "usa1"):
    try:
        EnergyMonitor(backend="simulated", country_iso_code=code)
        errors[code] = None
    except ValueError as err:
        errors[code] = str(err)
out["errors"] = errors
good = EnergyConfig(country_iso_code="deu")
out["good"] = [good.country_iso_code, good.intensity]
out["monitor"] = EnergyMonitor(backend="simulated", country_iso_code="GBR").country_iso_code
print(json.dumps(out))
"""


def _run_without_codecarbon(tmp_path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_invalid_country_is_refused_at_construction_without_codecarbon(tmp_path: Path) -> None:
    out = _run_without_codecarbon(tmp_path)
    assert out["import"] == "ImportError" and out["find_spec"] is False  # really absent
    for code in ("ZZZ", "XYZ"):
        message = out["errors"][code]
        assert message is not None and "`country_iso_code`" in message and repr(code) in message
        assert "ISO 3166" in message and "HINT:" in message
    for code in ("UK", "usa1"):  # wrong length: the 3-letter message
        assert "3-letter" in out["errors"][code] and "HINT:" in out["errors"][code]
    # a valid code is accepted (upper-cased); with no energy-mix table the intensity is the world average
    assert out["good"] == ["DEU", 475.0] and out["monitor"] == "GBR"


def test_the_shipped_iso_list() -> None:
    assert len(ISO_3166_ALPHA3) == 249 and all(len(c) == 3 and c.isupper() for c in ISO_3166_ALPHA3)
    assert is_iso_alpha3("fra") and not is_iso_alpha3("ZZZ") and not is_iso_alpha3(3)  # type: ignore[arg-type]
    pycountry = pytest.importorskip("pycountry")  # where installed, the list matches it
    assert {c.alpha_3 for c in pycountry.countries} == ISO_3166_ALPHA3
