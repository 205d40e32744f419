"""A site's policy (`[policy]` in site.toml): what its data steward allows to leave.

A site.toml without a `[policy]` section gets these safe defaults.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from analyses.disclosure import Limits
from analyses.registry import TYPES

TRAINING_TASKS = ("image_classification", "image_segmentation", "tabular_classification")


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_cell_count: int = Field(5, ge=1, description="smallest count that may leave: cells, group sizes, events")
    min_time_cell_count: int | None = Field(
        None, ge=1, description="smallest events/removals per time cell (default: min_cell_count)"
    )
    max_epsilon: float = Field(8.0, gt=0, description="differential-privacy budget of this site's data")
    delta: float = Field(1e-5, gt=0, lt=1)
    allowed_analyses: list[str] = Field(default_factory=list, description="empty = all built-in analyses")
    allowed_variables: list[str] = Field(default_factory=list, description="empty = all columns")
    min_rows_per_parameter: int = Field(3, ge=0, description="regressions need this many rows per parameter (0: off)")
    row_id: str | None = Field(None, description="column identifying a patient (default: the row's content)")
    clear_aggregation: bool = Field(
        False, description="send contributions unmasked when a study has secure aggregation off or fewer than 3 sites"
    )
    min_sites: int = Field(
        3, ge=3, description="send masked contributions only in rounds with at least this many sites"
    )
    full_masking_graph: bool = Field(
        False, description="mask with every other site (hidden unless all collude), not the sparse graph's neighbours"
    )
    own_share_minimums: bool = Field(
        False,
        description="also hold this site's own masked share to the minimums (stricter: refuses most survival "
        "analyses of small sites); by default, under secure aggregation the minimums apply to the published totals",
    )

    @field_validator("allowed_analyses")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        known = [*TYPES, *TRAINING_TASKS]
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"unknown analysis type '{unknown[0]}' (known: {', '.join(known)})")
        return names

    @model_validator(mode="after")
    def _time_cells(self) -> Policy:
        if self.min_time_cell_count is None:
            object.__setattr__(self, "min_time_cell_count", self.min_cell_count)
        return self

    @property
    def limits(self) -> Limits:
        return Limits(self.min_cell_count, self.min_time_cell_count or self.min_cell_count, self.min_rows_per_parameter,
                      self.own_share_minimums)  # fmt: skip

    def published(self) -> dict[str, int | bool]:
        """The limits the coordinator applies to cross-site totals (the largest over the sites wins)."""
        return {"min_cell_count": self.min_cell_count, "min_rows_per_parameter": self.min_rows_per_parameter,
                "min_sites": self.min_sites, "own_share_minimums": self.own_share_minimums,
                "full_masking_graph": self.full_masking_graph}  # fmt: skip

    def conflicts(self, analysis_type: str, variables: list[str]) -> list[str]:
        """Why this policy does not allow an analysis of `analysis_type` on `variables` (empty if it does)."""
        problems = []
        if self.allowed_analyses and analysis_type not in self.allowed_analyses:
            problems.append(f"the site's policy does not allow '{analysis_type}' analyses")
        if self.allowed_variables:
            denied = [name for name in variables if name not in self.allowed_variables]
            if denied:
                problems.append(f"the site's policy does not allow the variable(s) {', '.join(denied)}")
        return problems
