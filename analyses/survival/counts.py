"""Per-time event and removal counts: what Kaplan–Meier and the log-rank test need.

A site returns, for every cell of the public time axis and every (stratum, group) cell,
how many of its patients had the event then and how many left the risk set then
(events + censorings). At-risk numbers follow from these on the coordinator.
"""

from __future__ import annotations

import numpy as np

from analyses.contract import Contribution
from analyses.survival import follow_up


def local(time: np.ndarray, event: np.ndarray, cell: np.ndarray, cells: int, length: int) -> Contribution:
    """`events` and `removed`, shaped (cells, length), over axis cells 0 … length − 1 (`time` holds cell indices)."""
    follow_up.check(time, length)
    where = cell * length + time
    size = cells * length
    events = np.bincount(where, weights=event, minlength=size).astype(np.int64).reshape(cells, length)
    removed = np.bincount(where, minlength=size).astype(np.int64).reshape(cells, length)
    return {"events": events, "removed": removed}


def at_risk(removed: np.ndarray) -> np.ndarray:
    """Number at risk just before each time, per cell (last axis is time)."""
    total = removed.sum(axis=-1, keepdims=True)
    before = np.cumsum(removed, axis=-1) - removed
    return total - before
