"""The differencing guard: no two releases about the same variable may cover row sets that differ by 1 … k−1 rows.

The same statistic on S and on S minus one patient reveals that patient. The node keeps, in
`state/rowsets/`, every distinct row set it has released anything about (as sorted 64-bit row
keys, inside the hospital only) with the columns those releases were about, and refuses a new row
set whose symmetric difference with an earlier one is between 1 and k−1 rows when the two share a
column, across studies. Releases about unrelated columns never conflict; within one study every
analysis uses the same rows by default (`[cohort] missing = "complete_cases"`), so a study never
conflicts with itself. Row sets recorded before columns were kept count as about every column.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from analyses.disclosure import Refused

EVERY = "*"
"""Stands for every column (row sets recorded without their columns)."""

_LOADED: dict[Path, tuple[int, dict[str, tuple[np.ndarray, set[str]]]]] = {}
"""Per ledger folder (this process): the size of the index when read, and the row sets and their columns.
Read again whenever the index has changed size: another process (another study's request at this
site) may have recorded a row set since."""


class Ledger:
    def __init__(self, state: Path) -> None:
        self.folder = state / "rowsets"

    def check(self, keys: np.ndarray, k: int, columns: Iterable[str]) -> None:
        """Refuse a row set about `columns` that differs by 1 … k−1 rows from a recorded one about any of them."""
        rows, wanted = _rows(keys), set(columns)
        known = self._sets().get(_digest(rows))
        if known is not None and wanted <= known[1]:
            return  # released about these rows and columns before, so checked against every earlier set then
        for other, about in self._sets().values():
            if EVERY not in about and not about & wanted:
                continue
            shared = len(np.intersect1d(rows, other, assume_unique=True))
            if 0 < len(rows) + len(other) - 2 * shared < k:
                raise Refused(
                    f"its rows differ from an earlier query's by fewer than {k} patients, "
                    "so comparing the two would reveal them (differencing guard)"
                )

    def record(self, keys: np.ndarray, columns: Iterable[str], context: dict[str, Any]) -> None:
        """Remember a row set something was released about, and the columns it was about."""
        rows, about = _rows(keys), set(columns)
        digest = _digest(rows)
        known = self._sets()
        if digest in known and about <= known[digest][1]:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if digest not in known:
            handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, rows)
            os.replace(temporary, self.folder / f"{digest}.npy")
            known[digest] = (rows, set())
        known[digest][1].update(about)
        entry = {"digest": digest, "rows": len(rows), "columns": sorted(about),
                 "time": datetime.now(UTC).isoformat(), **context}  # fmt: skip
        with open(self.folder / "index.jsonl", "a", encoding="utf-8") as index:
            index.write(json.dumps(entry) + "\n")
        # What this process wrote is in `known` already (callers hold the site lock: no one else wrote meanwhile).
        _LOADED[self.folder] = ((self.folder / "index.jsonl").stat().st_size, known)

    def _sets(self) -> dict[str, tuple[np.ndarray, set[str]]]:
        index = self.folder / "index.jsonl"
        size = index.stat().st_size if index.exists() else 0
        if _LOADED.get(self.folder, (-1, {}))[0] != size:
            about: dict[str, set[str]] = {}
            if index.exists():
                for line in index.read_text(encoding="utf-8").splitlines():
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a crash: its row set counts as about everything
                        continue
                    about.setdefault(entry["digest"], set()).update(entry.get("columns", [EVERY]))
            files = sorted(self.folder.glob("*.npy")) if self.folder.exists() else []
            sets = {path.stem: (np.load(path), about.get(path.stem, {EVERY})) for path in files}
            _LOADED[self.folder] = (size, sets)
        return _LOADED[self.folder][1]


def _digest(rows: np.ndarray) -> str:
    return hashlib.sha256(rows.tobytes()).hexdigest()


def _rows(keys: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(keys).astype(np.uint64))
