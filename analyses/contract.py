"""The analysis contract: queries go to sites, additive contributions come back.

An analysis is a *plan* (a generator run by the coordinator) that yields `Query`
objects and receives, for each, the element-wise total of every site's
`Contribution`. A site answers a query with the analysis' `local` function.
`combine` logic never sees one site's contribution on its own.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analyses import fixed_point

Contribution = dict[str, np.ndarray]
"""Flat mapping of names to numeric (or, for column kinds, text) arrays."""

PUBLIC = "kind:"
"""Prefix of the only values a site sends in the clear under secure aggregation: whether a column is
numeric or text. They are combined as the union of distinct values; every other array is summed."""


def public(key: str) -> bool:
    """Whether `key` is a column kind (never masked, combined as a union) rather than an additive array."""
    return key.startswith(PUBLIC)


@dataclass(frozen=True)
class Query:
    """One request an analysis sends to every site in a round.

    `phase` names the computation, `params` holds JSON-able values (the current
    coefficients, the agreed levels and follow-up axis, ...).
    """

    phase: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"phase": self.phase, "params": self.params}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Query:
        return cls(phase=data["phase"], params=dict(data.get("params", {})))


Plan = Generator[Query, Contribution, dict[str, Any]]
"""Coordinator side of an analysis: yields queries, receives totals, returns the result."""


class DataError(Exception):
    """A site's data cannot answer a query (unknown column, text in a numeric column, ...).

    Raised on the node; the message names the column and says what to do. `private` holds what
    only the site's own steward may read (e.g. the undeclared value found): it stays in the node's log.
    """

    def __init__(self, message: str, private: str = "") -> None:
        super().__init__(message)
        self.private = private


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


def reduce_contributions(replies: Iterable[tuple[str, Contribution]]) -> Contribution:
    """Combine site replies in site-id order, so any answer order gives identical bits.

    Additive arrays are summed element-wise, exactly (see `analyses.fixed_point`); column kinds
    (`public` keys) become the sorted distinct values.
    """
    ordered = sorted(replies, key=lambda item: item[0])
    keys = sorted({key for _, contribution in ordered for key in contribution})
    total: Contribution = {}
    for key in keys:
        arrays = [np.asarray(contribution[key]) for _, contribution in ordered if key in contribution]
        if not public(key):
            shapes = {a.shape for a in arrays}
            if len(shapes) != 1 or len(arrays) != len(ordered):
                raise AnalysisError(f"sites sent different shapes for '{key}': {sorted(shapes)}")
            try:
                limbs = fixed_point.total(fixed_point.encode(a) for a in arrays)
            except fixed_point.OutOfRange as error:
                raise AnalysisError(f"'{key}': {error}; rescale the variable") from None
            total[key] = fixed_point.decode(limbs, integer=all(fixed_point.is_count(a) for a in arrays))
        else:
            total[key] = np.unique(np.concatenate([a.ravel() for a in arrays]))
    return total


def reduce_queries(
    replies: Iterable[tuple[str, Mapping[str, Contribution]]], queries: Iterable[str]
) -> dict[str, Contribution | AnalysisError]:
    """Per analysis, the combined site replies, or the error that prevents combining them."""
    replies = list(replies)
    totals: dict[str, Contribution | AnalysisError] = {}
    for analysis_id in queries:
        try:
            totals[analysis_id] = reduce_contributions(
                [(site, contributions[analysis_id]) for site, contributions in replies]
            )
        except AnalysisError as error:
            totals[analysis_id] = error
    return totals
