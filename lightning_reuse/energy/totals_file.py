"""The fit's energy totals in a small JSON file beside the logs, rewritten atomically after every epoch.

Loggers may buffer (``CSVLogger`` writes ``metrics.csv`` only when it saves) and a ``kill -9`` gives no
process a chance to flush. The file is written to a temporary name in the same folder and renamed over the
old one (``os.replace`` is atomic on POSIX and Windows), so it always holds a complete document: after a
hard kill, the last finished epoch's totals (at most the current epoch is lost).

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from lightning_reuse.energy.accounting import FitAccounting
    >>> fit = FitAccounting(backend="simulated")
    >>> path = Path(tempfile.mkdtemp()) / "energy_totals.json"
    >>> write_json_atomic(path, totals_document(fit, status="running"))
    >>> doc = json.loads(path.read_text())
    >>> doc["status"], doc["epochs_finished"], doc["total"]["energy_wh"]
    ('running', 0, 0.0)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from lightning_reuse.energy.accounting import FitAccounting
from lightning_reuse.energy.records import COMPONENTS, EnergyRecord

#: Version of the document's layout (bumped when a key changes meaning).
TOTALS_VERSION = 1


def totals_document(
    fit: FitAccounting, status: str, *, final: bool = False, summed_over_ranks: bool = True
) -> dict[str, Any]:
    """The JSON document of a fit's totals so far.

    Args:
        fit: the fit accounting to read.
        status: ``"running"`` (after an epoch), ``"ok"`` (finished), ``"interrupted"`` or ``"failed: ..."``.
        final: the fit ended (normally or not): ``total`` is everything measured, the current epoch
            included; otherwise ``total`` is the total at the last epoch boundary.
        summed_over_ranks: whether the figures are summed over DDP ranks (``False`` after a fault in
            DDP: no collective can run then, so the numbers are this rank's).

    Returns:
        ``{"version", "status", "final", "summed_over_ranks", "epochs_finished", "total", "epochs",
        "windows", "prediction", "budget", "written_at"}`` with records as :meth:`EnergyRecord.to_dict`
        values, except that a component that was not measured is ``null`` (never a silent 0 Wh); ``budget``
        holds the budgets, the action and every decision (:meth:`BudgetGuard.summary`).
    """
    total = fit.total if final else fit.cumulative
    prediction = fit.predictions[-1].to_dict() if fit.predictions else None
    return {
        "version": TOTALS_VERSION,
        "status": status,
        "final": final,
        "summed_over_ranks": summed_over_ranks,
        "epochs_finished": len(fit.epochs),
        "total": record_dict(total),
        "epochs": [record_dict(e) for e in fit.epochs],
        "windows": {name: record_dict(record) for name, record in fit.windows.items()},
        "prediction": prediction,
        "budget": fit.budget.summary(),
        "written_at": time.time(),
    }


def record_dict(record: EnergyRecord) -> dict[str, Any]:
    """:meth:`EnergyRecord.to_dict` with ``None`` for each component that was not measured.

    >>> record = EnergyRecord(cpu_wh=1.0, method={"cpu": "estimate", "gpu": "not measured"})
    >>> record_dict(record)["gpu_wh"] is None
    True
    """
    out = record.to_dict()
    for component in COMPONENTS:
        if not record.measured(component):
            out[f"{component}_wh"] = None
    return out


def write_json_atomic(path: str | os.PathLike[str], document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` as JSON through a temporary file and a rename (never half-written).

    NaN (a prediction that could not be made) and infinities are written as ``null``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(_no_nan(document), fh, indent=1, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value
