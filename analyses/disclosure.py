"""Disclosure manifests: what each analysis sends per round, and which counts a node must check.

Every key a site's `local` function returns must match one manifest item of its
phase; the node refuses to send anything undeclared. The rules apply where values become
visible: in the clear to each site's own reply (`release`), under secure aggregation to the
cross-site totals the coordinator publishes (`publish`). The approval screen and the ethics
export are generated from the same items, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from analyses.contract import AnalysisError, Contribution

WITHHELD = -(1 << 40)
"""What a site sends in each cell of a quantile search's row it may not release: any sum with it is negative."""

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
    RANK = "rank"
    """A quantile search's counts: per target row, values at or below each cut point, then the row's values in all.
    Never sent in the clear (a site's counts at fine cuts would place its patients): the rows go withheld (all
    `WITHHELD`), as does a site's own masked row leaving 1 … k−1 values on a side of a cut where its policy holds
    its own share to its minimums; cross-site totals are published only as whether each cut reaches the target's
    rank (the query's `ranks`), and not at all for a rank with fewer than k values below or above it."""


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
    at_site: bool = False
    """Checked against the site's own policy in every mode, also under secure aggregation: for replies whose
    cross-site totals are sums of functions of each site's own data (strata or groups that are sites)."""

    @property
    def sent(self) -> bool:
        return self.control not in (Control.GUARD, Control.SATURATION)

    def matches(self, phase: str, key: str) -> bool:
        return phase == self.phase and fnmatch.fnmatchcase(key, self.key)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "control": str(self.control), "sent": self.sent}


@dataclass(frozen=True)
class Limits:
    """Disclosure limits: a site's policy on its own replies, or the study's on published cross-site totals."""

    min_count: int = 1
    min_time_count: int = 1
    rows_per_parameter: int = 0
    """Refuse regressions with fewer rows than this many per parameter (DataSHIELD: 3; 0: off)."""
    own_share_when_masked: bool = False
    """Also hold this site's own masked share to its minimums (a steward's stricter choice)."""


class Refused(Exception):
    """The site may not release this contribution; the message says why (never the offending value)."""


def release(
    contribution: Contribution, manifest: tuple[Item, ...], phase: str, limits: Limits, masked: bool = False
) -> Contribution:
    """What may leave the site. Raises Refused for an undeclared key or a count the limits do not allow.

    In the clear (`masked` False) the site's own counts are what the coordinator sees, so every rule
    applies to them: minimums, guards (checked, then removed) and RANGE counts as honest ranges. Under
    secure aggregation the share is noise to everyone: rules apply to the cross-site totals instead
    (`publish`), so guards other than per-time ones are sent masked for that check; a site whose policy
    says `own_share_when_masked` still applies its own rules first.
    """
    own = not masked or limits.own_share_when_masked
    released: Contribution = {}
    for key, value in contribution.items():
        item = next((i for i in manifest if i.matches(phase, key)), None)
        if item is None:
            raise Refused(f"'{key}' is not in the analysis' disclosure manifest")
        if item.control == Control.RANK:
            released[key] = value if not own else withhold(value, limits.min_count) if masked else _withheld(value)
            continue
        if own or item.at_site:
            check(item, value, limits, Refused)
        if item.control == Control.RANGE:
            released[key], released[key + UPPER] = protect(value, limits.min_count) if own else (value, value)
        elif item.sent or (masked and not item.per_time and not item.at_site):
            released[key] = value
    return released


def _withheld(counts: np.ndarray) -> np.ndarray:
    return np.full(np.shape(counts), WITHHELD, dtype=np.int64)


def publish(
    total: Contribution,
    manifest: tuple[Item, ...],
    phase: str,
    limits: Limits,
    sites: int,
    params: dict[str, Any] | None = None,
) -> Contribution:
    """The study's rules on cross-site totals under secure aggregation, before a plan sees them.

    Counts per time cell are the pooled event table and pass as a pooled analysis would show them;
    other minimums and guards must hold for the totals (else AnalysisError: nothing is published);
    RANGE counts below the minimum become honest ranges; RANK counts become comparisons with the
    query's `params["ranks"]`. `sites` is the number of contributors.
    """
    published: Contribution = {}
    for key, value in total.items():
        if key.endswith(UPPER):
            continue
        item = next((i for i in manifest if i.matches(phase, key)), None)
        if item is None:
            raise AnalysisError(f"sites sent '{key}', which is not in the analysis' disclosure manifest")
        if item.control == Control.SATURATION:
            value = np.array([value[0], value[1] // max(sites, 1)])  # every site sent the same parameter count
        if item.control == Control.RANK:
            ranks = (params or {}).get("ranks", {}).get(key.split(":", 1)[1])
            if ranks is None or len(ranks) != len(value):
                raise AnalysisError(f"sites sent '{key}', which the query did not ask for")
            published[key] = reached(value, ranks, limits.min_count)
            continue
        if not item.per_time:
            check(item, value, limits, AnalysisError, totals=True)
        if item.control == Control.RANGE:
            lower, upper = bounds(total, key)
            if np.array_equal(lower, upper):
                try:
                    lower, upper = protect(lower, limits.min_count)
                except Refused as error:
                    raise AnalysisError(f"not published: {error}") from None
            published[key], published[key + UPPER] = lower, upper
        elif item.sent:
            published[key] = value
    return published


def reached(counts: np.ndarray, ranks: list[int], k: int) -> np.ndarray:
    """A quantile search's cross-site counts as published: per target row, its rank r at each cut the count reaches
    and 0 where it does not, the row's total last; a row whose rank has fewer than k values below or above it is
    withheld (all −1)."""
    out = np.full(np.shape(counts), -1, dtype=np.int64)
    for row, (values, rank) in enumerate(zip(counts, ranks, strict=True)):
        n = int(values[-1])
        if rank - 1 >= k and n - rank >= k:
            out[row, :-1] = np.where(values[:-1] >= rank, rank, 0)
            out[row, -1] = n
    return out


def withhold(counts: np.ndarray, k: int) -> np.ndarray:
    """A site's own quantile-search rows as it may send them: a row leaving 1 … k−1 of its values below or above
    a cut becomes all WITHHELD (the coordinator then gives that order statistic up)."""
    below = np.asarray(counts)[:, :-1]
    above = np.asarray(counts)[:, -1:] - below
    small = np.any((below > 0) & (below < k), axis=1) | np.any((above > 0) & (above < k), axis=1)
    return np.where(small[:, None], WITHHELD, counts)


def check(item: Item, value: np.ndarray, limits: Limits, fail: type[Exception], totals: bool = False) -> None:
    """Raise `fail` if `value` breaks the item's minimum, guard or saturation rule (the message names the rule)."""
    k = limits.min_time_count if item.per_time else limits.min_count
    if item.control in (Control.MINIMUM, Control.GUARD) and np.any((value > 0) & (value < k)):
        if totals:
            raise fail(f"not published: {item.meaning}: a cross-site total between 1 and {k - 1} "
                       f"(the sites' largest minimum count is {k})")  # fmt: skip
        raise fail(f"{item.meaning}: a count between 1 and {k - 1} (the site's minimum is {k})")
    if item.control == Control.SATURATION and int(value[1]) * limits.rows_per_parameter > value[0]:
        where = "in all" if totals else "at each site"
        raise fail(f"{int(value[1])} parameters need at least {int(value[1]) * limits.rows_per_parameter} rows "
                   f"{where} ({limits.rows_per_parameter} per parameter)")  # fmt: skip


def protect(counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Honest ranges for a table of counts whose total is published: small counts and their complements.

    Every count of 1 … k−1 becomes the range [1, k−1]. Because the table's total is known, the
    largest counts (as many as needed) also become ranges that absorb every combination the small
    ones could take, so no small count can be recovered by subtraction. Raises Refused when the
    table has too few large counts to do that.
    """
    flat = np.asarray(counts).ravel().astype(np.int64)
    small = (flat > 0) & (flat < k)
    lower, upper = flat.copy(), flat.copy()
    if not small.any():
        return lower.reshape(np.shape(counts)), upper.reshape(np.shape(counts))
    lower[small], upper[small] = 1, k - 1
    down = int(small.sum()) * (k - 1) - int(flat[small].sum())  # how much larger the small counts could be
    up = int(flat[small].sum()) - int(small.sum())  # … and how much smaller
    for position, cell in enumerate(np.argsort(-np.where(small, 0, flat), kind="stable")):
        if flat[cell] < k:
            break
        share = min(int(flat[cell]) - k, down)
        lower[cell], down = flat[cell] - share, down - share
        if position == 0:
            upper[cell] = flat[cell] + up
        if down == 0:
            return lower.reshape(np.shape(counts)), upper.reshape(np.shape(counts))
    raise Refused(f"too many counts between 1 and {k - 1} to publish the table even as ranges")


def rule(item: Item, limits: Limits, masked: bool) -> str:
    """In words, what happens to one item before anything leaves (the steward's review, dashboard, ethics pack).

    `limits` are one site's; under secure aggregation the published totals use the largest minimum
    of the participating sites, which is at least this site's.
    """
    k = limits.min_time_count if item.per_time else limits.min_count
    if item.key.startswith("kind:"):
        return "sent in the clear (numeric or text; the only item never masked)"
    if item.control == Control.RANK and not masked:
        return (
            "not sent in the clear (counts at fine cut points would place patients): quantiles need secure aggregation"
        )
    if item.at_site and masked and not limits.own_share_when_masked:
        return (f"checked at this site (each 0 or ≥ {k}), also under secure aggregation: the cross-site totals "
                "are sums of each site's own terms; never sent")  # fmt: skip
    if not masked or limits.own_share_when_masked:
        own = {
            Control.NONE: "sent",
            Control.RANGE: f"sent; a count of 1–{k - 1} is sent as the range 1–{k - 1} (and the table's largest "
            "count widened to match)",
            Control.MINIMUM: f"sent if each count is 0 or ≥ {k}, else refused",
            Control.GUARD: f"checked (each 0 or ≥ {k}), never sent",
            Control.SATURATION: f"checked (≥ {limits.rows_per_parameter} rows per parameter), never sent",
            Control.RANK: f"sent if 0 or ≥ {k} values lie below and above each cut point, else that order statistic "
            "is withheld",
        }[item.control]
        if not masked:
            return own
        if item.control == Control.GUARD and item.per_time:
            return own
        return f"{own.removesuffix(', never sent')}; then masked, and the rule applies again to the cross-site total"
    if item.per_time:
        if item.control == Control.GUARD:
            return "not sent (under secure aggregation per-time totals are published as the pooled event table)"
        return "masked; the cross-site totals are the pooled event table (published as a pooled analysis shows it)"
    return {
        Control.NONE: "masked; only the cross-site total is seen",
        Control.RANGE: f"masked; a cross-site total of 1 to k−1 is published as a range (k = the largest minimum "
        f"count of the sites, here ≥ {k})",
        Control.MINIMUM: f"masked; the cross-site total must be 0 or ≥ k, else nothing is published (k ≥ {k})",
        Control.GUARD: f"masked; checked on the cross-site total (each 0 or ≥ k, k ≥ {k}), never published",
        Control.SATURATION: f"masked; the cross-site rows must reach {limits.rows_per_parameter} per parameter "
        "(the largest of the sites' rows per parameter)",
        Control.RANK: "masked; of the cross-site totals only whether each cut point reaches the rank sought is "
        f"published, and nothing for a rank with fewer than k values below or above it (k ≥ {k}): never a minimum "
        "or maximum",
    }[item.control]


def bounds(total: Contribution, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of a RANGE count (equal where it is exact)."""
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
    Item("discover", "kind:*", "(1,)", "whether the column is numeric or text (never masked)"),
    Item("discover", "levels:*", "(declared levels,)", "per value the protocol declares for the column: 1 if any "
         "of the site's rows holds it, else 0"),
    Item("discover", "follow_up", "(bins,)", "per bin of a public coarse ladder of follow-up: 1 if any of the "
         "site's durations falls in it, else 0 (sizes the time axis)"),
)  # fmt: skip
"""Items of the discovery round, part of every analysis' manifest."""

MODEL_MOMENTS = (
    Item("moments", "n", "(1,)", "rows used", Control.MINIMUM),
    Item("moments", "n_dropped", "(1,)", "rows left out for a missing value"),
    Item("moments", "guard:categories", "(k,)", "rows per covariate category and per binary outcome value",
         Control.GUARD),
    Item("moments", "guard:saturation", "(2,)", "rows and parameters", Control.SATURATION),
)  # fmt: skip
"""The first-round items every regression (GLM, Cox) shares: rows used and DataSHIELD's guards."""
