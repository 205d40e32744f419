"""The differencing guard: no two released statistics may cover row sets that differ by 1 … k−1 rows.

The same statistic on S and on S minus one patient reveals that patient. The node keeps,
in `state/rowsets/`, every distinct row set it has released anything about (as sorted
64-bit row keys, inside the hospital only) and refuses a new row set whose symmetric
difference with any earlier one is between 1 and k−1 rows, across studies.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from analyses.disclosure import Refused

_LOADED: dict[Path, dict[str, np.ndarray]] = {}
"""Row sets read from disk, per ledger folder (this process)."""


class Ledger:
    def __init__(self, state: Path) -> None:
        self.folder = state / "rowsets"

    def check(self, keys: np.ndarray, k: int) -> None:
        """Refuse a row set that differs from a recorded one by 1 … k−1 rows."""
        rows = _rows(keys)
        for other in self._sets().values():
            shared = len(np.intersect1d(rows, other, assume_unique=True))
            if 0 < len(rows) + len(other) - 2 * shared < k:
                raise Refused(
                    f"its rows differ from an earlier query's by fewer than {k} patients, "
                    "so comparing the two would reveal them (differencing guard)"
                )

    def record(self, keys: np.ndarray, context: dict[str, Any]) -> None:
        """Remember a row set something was released about."""
        rows = _rows(keys)
        digest = hashlib.sha256(rows.tobytes()).hexdigest()
        known = self._sets()
        if digest not in known:
            self._write(digest, rows, context)
            known[digest] = rows

    def _sets(self) -> dict[str, np.ndarray]:
        if self.folder not in _LOADED:
            files = sorted(self.folder.glob("*.npy")) if self.folder.exists() else []
            _LOADED[self.folder] = {path.stem: np.load(path) for path in files}
        return _LOADED[self.folder]

    def _write(self, digest: str, rows: np.ndarray, context: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, rows)
        os.replace(temporary, self.folder / f"{digest}.npy")
        entry = {"digest": digest, "rows": int(len(rows)), "time": datetime.now(UTC).isoformat(), **context}
        with open(self.folder / "index.jsonl", "a", encoding="utf-8") as index:
            index.write(json.dumps(entry) + "\n")


def _rows(keys: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(keys).astype(np.uint64))
