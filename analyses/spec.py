"""Base of every analysis' parameters, as written in a protocol's `[[analysis]]` block."""

from __future__ import annotations

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from analyses.columns import complete_cases


class Spec(BaseModel):
    """Common fields; subclasses add their columns and options. Unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)

    def columns(self) -> list[str]:
        """Every column of the cohort table this analysis reads."""
        raise NotImplementedError

    def row_sets(self, frame: pd.DataFrame) -> list[pd.Index]:
        """The rows each statistic it releases covers (for the node's differencing guard)."""
        return [complete_cases(frame, self.columns()).index]


class Confidence(BaseModel):
    """Mixin for analyses that report confidence intervals."""

    alpha: float = Field(0.05, gt=0, lt=1, description="1 - confidence level of the intervals")
