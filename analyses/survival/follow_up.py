"""Follow-up columns of survival analyses on a public time axis every site builds alone.

The protocol declares the durations' resolution: `time_grid`, a named grid in days or a width
in the duration's own unit (default 1: whole days when durations are days). A duration t falls in
cell ⌈t / w⌉ and stands for the time ⌈t / w⌉·w, the end of its cell; at the data's own
resolution (integer days with the default) nothing moves, so results equal the pooled references.

The axis is cells 0 … K. K comes from a masked round over a coarse public axis: each site says,
per bin of a geometric ladder (eight bins per doubling), whether any of its durations falls in it;
only the number of sites per bin is seen, and K is the end of the highest bin in use, at most
about 9 % beyond the longest follow-up. No site ever sends its own times.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, field_validator

from analyses import columns as col
from analyses.contract import DataError

GRIDS = {"day": 1.0, "week": 7.0, "month": 30.4375, "quarter": 91.3125, "year": 365.25}
"""Named grids, in days (a month is 365.25 / 12 days)."""

TimeGrid = Literal["day", "week", "month", "quarter", "year"] | float | None

LADDER = np.unique(np.floor(2.0 ** (np.arange(0, 8 * 48 + 1) / 8)).astype(np.int64))
"""Lower edges of the public coarse bins of the cell index: bin 0 is cell 0, bin b ≥ 1 holds
cells LADDER[b − 1] … LADDER[b] − 1 (eight bins per doubling, up to 2⁴⁸ cells)."""


class FollowUp(BaseModel):
    """Mixin: `duration`, `event` and the durations' resolution `time_grid`."""

    duration: str
    event: str
    time_grid: TimeGrid = Field(
        None, description="resolution: a named grid (in days) or a cell width in the duration's unit (default 1)"
    )

    @field_validator("time_grid")
    @classmethod
    def _positive(cls, value: TimeGrid) -> TimeGrid:
        if isinstance(value, float) and value <= 0:
            raise ValueError("a time_grid width must be positive")
        return value

    @property
    def grid_width(self) -> float:
        """Width of one cell of the time axis, in the duration's unit."""
        if self.time_grid is None:
            return 1.0
        return GRIDS[self.time_grid] if isinstance(self.time_grid, str) else float(self.time_grid)

    def follow_up(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Each row's cell on the time axis (int64) and its 0/1 event."""
        return cells(col.durations(rows, self.duration), self.grid_width), col.events(rows, self.event)


def cells(times: np.ndarray, width: float) -> np.ndarray:
    """The axis cell ⌈t / w⌉ of each duration."""
    return np.ceil(times / width).astype(np.int64)


def presence(cell: np.ndarray) -> np.ndarray:
    """1 for each coarse bin some duration falls in (what a site sends to size the axis)."""
    found = np.zeros(len(LADDER) + 1, dtype=np.int64)
    found[np.searchsorted(LADDER, cell, side="right")] = 1
    if found[-1]:
        raise DataError("a follow-up time is beyond 2^48 cells of the time axis; declare a coarser time_grid")
    return found


def axis_length(sites_per_bin: np.ndarray) -> int:
    """Number of cells 0 … K of the axis, from how many sites have durations in each coarse bin."""
    used = np.flatnonzero(sites_per_bin)
    if used.size == 0:
        return 0
    highest = int(used[-1])
    return 1 if highest == 0 else int(LADDER[highest])


def check(cell: np.ndarray, length: int) -> None:
    """Refuse durations outside the agreed axis (the table changed during the study)."""
    if cell.size and int(cell.max()) >= length:
        raise DataError("a follow-up time is beyond the agreed time axis: did the table change during the study?")
