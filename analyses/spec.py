"""Base of every analysis' parameters, as written in a protocol's `[[analysis]]` block."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Spec(BaseModel):
    """Common fields; subclasses add their columns and options. Unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)

    def columns(self) -> list[str]:
        """Every column of the cohort table this analysis reads."""
        raise NotImplementedError


class Confidence(BaseModel):
    """Mixin for analyses that report confidence intervals."""

    alpha: float = Field(0.05, gt=0, lt=1, description="1 - confidence level of the intervals")
