"""Follow-up columns of survival analyses, optionally coarsened to a declared time grid.

With a grid of width w, each duration becomes the end of its cell: ⌈t / w⌉·w. Per-time
counts then describe cells of the grid rather than exact days, and results equal the
pooled reference run on the same coarsened durations.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, field_validator

from analyses import columns as col

GRIDS = {"day": 1.0, "week": 7.0, "month": 30.4375, "quarter": 91.3125, "year": 365.25}
"""Named grids, in days (a month is 365.25 / 12 days)."""

TimeGrid = Literal["day", "week", "month", "quarter", "year"] | float | None


class FollowUp(BaseModel):
    """Mixin: `duration`, `event` and an optional `time_grid` (a named grid in days, or a width)."""

    duration: str
    event: str
    time_grid: TimeGrid = Field(None, description="named grid (in days) or a cell width in the duration's unit")

    @field_validator("time_grid")
    @classmethod
    def _positive(cls, value: TimeGrid) -> TimeGrid:
        if isinstance(value, float) and value <= 0:
            raise ValueError("a time_grid width must be positive")
        return value

    @property
    def grid_width(self) -> float | None:
        if self.time_grid is None:
            return None
        return GRIDS[self.time_grid] if isinstance(self.time_grid, str) else float(self.time_grid)

    def follow_up(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Durations (on the grid) and 0/1 events of `rows`."""
        return coarsen(col.durations(rows, self.duration), self.grid_width), col.events(rows, self.event)


def coarsen(times: np.ndarray, width: float | None) -> np.ndarray:
    """Each time moved to the end of its grid cell (unchanged without a grid)."""
    return times if width is None else np.ceil(times / width) * width
