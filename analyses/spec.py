"""Base of every analysis' parameters, as written in a protocol's `[[analysis]]` block."""

from __future__ import annotations

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from analyses.columns import complete_cases

RowSet = tuple[pd.Index, list[str]]
"""Rows a released statistic covers, and the columns whose values it is about."""


class Spec(BaseModel):
    """Common fields; subclasses add their columns and options. Unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)

    def columns(self) -> list[str]:
        """Every column of the cohort table this analysis reads."""
        raise NotImplementedError

    def grouping(self) -> list[str]:
        """Columns whose levels define groups, strata or table cells (the protocol must declare their values)."""
        return []

    def drops(self) -> list[str]:
        """Columns a row must have a value in to be used (listwise deletion when analyses drop their own rows)."""
        return self.columns()

    def row_sets(self, frame: pd.DataFrame) -> list[RowSet]:
        """The rows each statistic it releases covers, with the columns it is about (for the differencing guard)."""
        return [(complete_cases(frame, self.columns()).index, self.columns())]


class Confidence(BaseModel):
    """Mixin for analyses that report confidence intervals."""

    alpha: float = Field(0.05, gt=0, lt=1, description="1 - confidence level of the intervals")
