"""Read back what an offline W&B run logged, from its files (no network, no API)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def find_offline_run_dirs(root: Path) -> list[Path]:
    """All ``offline-run-*`` folders under ``root``."""
    return sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir())


_BLOCK = 32768
_HEADER = 7  # checksum (4), length (2), type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _scan_records(raw: bytes) -> list[bytes]:
    """Split a ``.wandb`` file (a LevelDB-style log after a 7-byte ``:W&B`` header) into record payloads."""
    if raw[:4] != b":W&B":
        raise ValueError("not a W&B transaction log")
    out: list[bytes] = []
    pos, pending = 7, b""
    while pos + _HEADER <= len(raw):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:  # block trailer padding
            pos += left_in_block
            continue
        length = int.from_bytes(raw[pos + 4 : pos + 6], "little")
        kind = raw[pos + 6]
        if pos + _HEADER + length > len(raw):  # a record still being written
            break
        payload = raw[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        if kind == _FULL:
            out.append(payload)
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            out.append(pending + payload)
            pending = b""
    return out


def read_offline_run(run_dir: Path, timeout: float = 30.0) -> dict[str, Any]:
    """Return ``{"history": [rows...], "summary": {...}, "keys": set(...)}`` from a run's ``.wandb`` file.

    The W&B service writes the file asynchronously, also after ``wandb.finish()`` returns: wait (up to
    ``timeout`` seconds) for the run's ``exit`` record before reading.
    """
    from wandb.proto import wandb_internal_pb2

    files = list(Path(run_dir).glob("*.wandb"))
    if not files:
        raise FileNotFoundError(f"No .wandb file in {run_dir}")
    deadline = time.monotonic() + timeout
    while True:
        records = []
        for data in _scan_records(files[0].read_bytes()):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(data)
            records.append(rec)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            history.append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                summary[key] = json.loads(item.value_json)
    keys = set().union(*(r.keys() for r in history)) if history else set()
    return {"history": history, "summary": summary, "keys": keys | set(summary)}
