"""Per-time event and removal counts: what Kaplan–Meier and the log-rank test need.

A site returns, for every agreed time and every (stratum, group) cell, how many
of its patients had the event then and how many left the risk set then
(events + censorings). At-risk numbers follow from these on the coordinator.
"""

from __future__ import annotations

import numpy as np

from analyses.contract import Contribution, DataError


def local(time: np.ndarray, event: np.ndarray, cell: np.ndarray, cells: int, times: np.ndarray) -> Contribution:
    """`events` and `removed`, shaped (cells, times), for the agreed `times`."""
    where = np.searchsorted(times, time)
    if np.any(where >= len(times)) or np.any(times[np.minimum(where, len(times) - 1)] != time):
        raise DataError("a follow-up time is not on the agreed time grid: did the table change during the study?")
    events = np.zeros((cells, len(times)), dtype=np.int64)
    removed = np.zeros((cells, len(times)), dtype=np.int64)
    np.add.at(removed, (cell, where), 1)
    np.add.at(events, (cell, where), event.astype(np.int64))
    return {"events": events, "removed": removed}


def at_risk(removed: np.ndarray) -> np.ndarray:
    """Number at risk just before each time, per cell (last axis is time)."""
    total = removed.sum(axis=-1, keepdims=True)
    before = np.cumsum(removed, axis=-1) - removed
    return total - before
