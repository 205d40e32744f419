"""The analysis contract: queries go to sites, additive contributions come back.

An analysis is a *plan* (a generator run by the coordinator) that yields `Query`
objects and receives, for each, the element-wise total of every site's
`Contribution`. A site answers a query with the analysis' `local` function.
`combine` logic never sees one site's contribution on its own.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from analyses import fixed_point

Contribution = dict[str, np.ndarray]
"""Flat mapping of names to numeric (or, for discovery, text) arrays."""

Reduce = Literal["sum", "union"]


@dataclass(frozen=True)
class Query:
    """One request an analysis sends to every site in a round.

    `phase` names the computation, `params` holds JSON-able values (the current
    coefficients, the agreed time grid, ...). `reduce` says how site replies are
    combined: element-wise `sum` (the default, additive contributions) or
    `union` of distinct values (only for discovering levels and time grids).
    """

    phase: str
    params: dict[str, Any] = field(default_factory=dict)
    reduce: Reduce = "sum"

    def to_json(self) -> dict[str, Any]:
        return {"phase": self.phase, "params": self.params, "reduce": self.reduce}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Query:
        return cls(phase=data["phase"], params=dict(data.get("params", {})), reduce=data.get("reduce", "sum"))


Plan = Generator[Query, Contribution, dict[str, Any]]
"""Coordinator side of an analysis: yields queries, receives totals, returns the result."""


class DataError(Exception):
    """A site's data cannot answer a query (unknown column, text in a numeric column, ...).

    Raised on the node; the message names the column and says what to do.
    """


class AnalysisError(Exception):
    """The combined data do not allow the analysis (too few groups, no convergence, ...)."""


class Refusal(AnalysisError):
    """Sites refused to contribute to an analysis; `sites` maps each to its reason."""

    def __init__(self, sites: Mapping[str, str]) -> None:
        self.sites = dict(sorted(sites.items()))
        by_reason: dict[str, list[str]] = {}
        for site, reason in self.sites.items():
            by_reason.setdefault(reason, []).append(site)
        parts = []
        for reason, names in by_reason.items():
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more sites" if len(names) > 3 else "")
            parts.append(f"{shown} ({reason})")
        super().__init__("refused by " + "; ".join(parts))


def reduce_contributions(replies: Iterable[tuple[str, Contribution]], how: Reduce) -> Contribution:
    """Combine site replies in site-id order, so any answer order gives identical bits.

    `sum` adds arrays element-wise, exactly (see `analyses.fixed_point`); `union` returns the
    sorted distinct values per key.
    """
    ordered = sorted(replies, key=lambda item: item[0])
    keys = sorted({key for _, contribution in ordered for key in contribution})
    total: Contribution = {}
    for key in keys:
        arrays = [np.asarray(contribution[key]) for _, contribution in ordered if key in contribution]
        if how == "sum":
            shapes = {a.shape for a in arrays}
            if len(shapes) != 1 or len(arrays) != len(ordered):
                raise AnalysisError(f"sites sent different shapes for '{key}': {sorted(shapes)}")
            try:
                limbs = fixed_point.total(fixed_point.encode(a) for a in arrays)
            except fixed_point.OutOfRange as error:
                raise AnalysisError(f"'{key}': {error}; rescale the variable") from None
            total[key] = fixed_point.decode(limbs, integer=all(a.dtype.kind in "iub" for a in arrays))
        else:
            present = [a.ravel() for a in arrays if a.size]
            if len({a.dtype.kind in "US" for a in present}) > 1:
                raise AnalysisError(f"'{key.split(':', 1)[-1]}' holds numbers at some sites and text at others")
            total[key] = np.unique(np.concatenate(present)) if present else np.array([])
    return total


def reduce_queries(
    replies: Iterable[tuple[str, Mapping[str, Contribution]]], queries: Mapping[str, Query]
) -> dict[str, Contribution | AnalysisError]:
    """Per analysis, the combined site replies, or the error that prevents combining them."""
    replies = list(replies)
    totals: dict[str, Contribution | AnalysisError] = {}
    for analysis_id, query in queries.items():
        try:
            totals[analysis_id] = reduce_contributions(
                [(site, contributions[analysis_id]) for site, contributions in replies], query.reduce
            )
        except AnalysisError as error:
            totals[analysis_id] = error
    return totals
