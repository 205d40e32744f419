"""Disclosure manifests: what each analysis sends per round, and which counts a node must check.

Every key a site's `local` function returns must match one manifest item of its
phase; the node refuses to send anything undeclared. Keys starting with `guard:`
are checked by the node and never sent. The approval screen and the ethics export
are generated from the same items, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from analyses.contract import Contribution

UPPER = "~upper"
"""Suffix of the upper-bound array sent beside a count released as a range."""


class Control(StrEnum):
    """How the node treats a returned array before anything leaves."""

    NONE = "none"
    """Not a count (sums, matrices, statistics): sent as computed."""
    RANGE = "range"
    """Counts that are results themselves: a count of 1 … k−1 is sent as the range [1, k−1]."""
    MINIMUM = "minimum"
    """Counts that must each be 0 or ≥ k, or the site refuses the analysis."""
    GUARD = "guard"
    """Checked like MINIMUM but never sent."""
    SATURATION = "saturation"
    """Guard [rows, parameters]: refuse unless rows ≥ parameters × the policy's rows per parameter."""


@dataclass(frozen=True)
class Item:
    """One array a site may return in one phase."""

    phase: str
    key: str
    """Key, or pattern with `*` (e.g. `n:*` for one per variable)."""
    shape: str
    meaning: str
    control: Control = Control.NONE
    per_time: bool = False
    """A count per time cell: checked against the policy's time-cell minimum."""

    @property
    def sent(self) -> bool:
        return self.control not in (Control.GUARD, Control.SATURATION)

    def matches(self, phase: str, key: str) -> bool:
        return phase == self.phase and fnmatch.fnmatchcase(key, self.key)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "control": str(self.control), "sent": self.sent}


@dataclass(frozen=True)
class Limits:
    """A site's disclosure limits (its policy, or none for in-process runs on trusted data)."""

    min_count: int = 1
    min_time_count: int = 1
    rows_per_parameter: int = 0
    """Refuse regressions with fewer rows than this many per parameter at the site (DataSHIELD: 3; 0: off)."""


class Refused(Exception):
    """The site may not release this contribution; the message says why (never the offending value)."""


def release(contribution: Contribution, manifest: tuple[Item, ...], phase: str, limits: Limits) -> Contribution:
    """What may leave the site: guards checked and removed, small RANGE counts widened to [1, k−1].

    Raises Refused for an undeclared key or a count the limits do not allow.
    """
    released: Contribution = {}
    for key, value in contribution.items():
        item = next((i for i in manifest if i.matches(phase, key)), None)
        if item is None:
            raise Refused(f"'{key}' is not in the analysis' disclosure manifest")
        k = limits.min_time_count if item.per_time else limits.min_count
        small = (value > 0) & (value < k) if item.control in (Control.RANGE, Control.MINIMUM, Control.GUARD) else None
        if item.control in (Control.MINIMUM, Control.GUARD) and np.any(small):
            raise Refused(f"{item.meaning}: a count between 1 and {k - 1} (the site's minimum is {k})")
        if item.control == Control.SATURATION and int(value[1]) * limits.rows_per_parameter > value[0]:
            needed = int(value[1]) * limits.rows_per_parameter
            raise Refused(
                f"{int(value[1])} parameters need at least {needed} rows at each site "
                f"({limits.rows_per_parameter} per parameter)"
            )
        if item.control == Control.RANGE:
            released[key] = np.where(small, 1, value)
            released[key + UPPER] = np.where(small, k - 1, value)
        elif item.sent:
            released[key] = value
    return released


def bounds(total: Contribution, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of a RANGE count (equal where every site sent it exactly)."""
    return total[key], total.get(key + UPPER, total[key])


def reported(lower: Any, upper: Any) -> Any:
    """An exact count as int, a range as text like "11-14"; element-wise for nested lists."""
    if isinstance(lower, list):
        return [reported(lo, hi) for lo, hi in zip(lower, upper, strict=True)]
    return int(lower) if lower == upper else f"{int(lower)}-{int(upper)}"


def time_guard(time: np.ndarray, cells: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Removals per time cell: patients leaving the risk set in (times[j−1], times[j]], per cell code."""
    where = np.searchsorted(times, time)
    size = int(cells.max(initial=-1)) + 1
    out = np.zeros((max(size, 1), len(times) + 1), dtype=np.int64)
    np.add.at(out, (cells, where), 1)
    return out


DISCOVERY = (
    Item("discover", "kind:*", "(1,)", "whether the column is numeric or text"),
    Item("discover", "levels:*", "(levels,)", "distinct values of a text or grouping column at the site"),
    Item("discover", "times", "(times,)", "distinct follow-up times (on the time grid) at the site"),
    Item("discover", "guard:removals", "(strata, times)", "patients leaving follow-up per time cell",
         Control.GUARD, per_time=True),
)  # fmt: skip
"""Items of the discovery round, part of every analysis' manifest."""

MODEL_MOMENTS = (
    Item("moments", "n", "(1,)", "rows used", Control.MINIMUM),
    Item("moments", "n_dropped", "(1,)", "rows left out for a missing value"),
    Item("moments", "guard:categories", "(k,)", "rows per covariate category and per binary outcome value "
         "(checked, not sent)", Control.GUARD),
    Item("moments", "guard:saturation", "(2,)", "rows and parameters (checked, not sent)", Control.SATURATION),
)  # fmt: skip
"""The first-round items every regression (GLM, Cox) shares: rows used and DataSHIELD's guards."""
