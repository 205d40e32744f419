"""Exact quantiles from counts at cut points: a many-way search over the ordered float64 values.

Every float64 maps to an unsigned 64-bit key in the same order. To find the value at rank r (the r-th smallest),
the coordinator keeps an interval of keys (lo, hi] that holds it and splits it at `WAYS − 1` cut points; sites
return how many of their values lie at or below each cut, and the first cut whose cross-site count reaches r is
the new hi. Each round divides the interval by `WAYS`, so 2⁶⁴ keys take 8 rounds. The quantile itself is then
interpolated by pandas, on a stand-in array holding the found values at their ranks, so it equals
`Series.quantile` to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

WAYS = 256
"""Parts each round splits a target's interval into (255 cut points)."""

SIGN = np.uint64(1 << 63)
LOWEST = int(np.array([-np.inf]).view(np.uint64)[0] ^ np.uint64(0xFFFFFFFFFFFFFFFF))
HIGHEST = int(np.array([np.inf]).view(np.uint64)[0] | SIGN)


def keys(values: np.ndarray) -> np.ndarray:
    """Order-preserving unsigned keys of finite or infinite float64 values (−0.0 counts as 0.0)."""
    bits = (np.asarray(values, dtype=np.float64) + 0.0).view(np.uint64)
    return np.where(bits & SIGN, ~bits, bits | SIGN)


def value(key: int) -> float:
    """The float64 a key stands for."""
    bits = np.uint64(key)
    return float(np.array([bits ^ SIGN if bits & SIGN else ~bits], dtype=np.uint64).view(np.float64)[0])


def at_or_below(values: np.ndarray, cuts: list[list[int]]) -> np.ndarray:
    """Per target row, how many `values` lie at or below each cut key, then len(values): shape (targets, cuts + 1)."""
    ordered = np.sort(keys(values))
    grid = np.asarray(cuts, dtype=np.uint64).reshape(len(cuts), -1)
    counts = np.searchsorted(ordered, grid, side="right").astype(np.int64)
    return np.hstack([counts, np.full((len(cuts), 1), len(ordered), dtype=np.int64)])


def positions(n: int, q: float) -> list[int]:
    """0-based ranks numpy's linear interpolation reads for quantile `q` of `n` values (one when it lands on one)."""
    virtual = (n - 1) * (np.float64(q * 100.0) / 100.0)  # pandas passes percentiles, numpy divides them back
    below = int(np.floor(virtual))
    if below >= n - 1:
        return [n - 1]
    return [below] if virtual == below else [below, below + 1]


def quantile(n: int, q: float, found: dict[int, float]) -> float:
    """pandas' `quantile(q)` of n values whose values at the ranks `positions(n, q)` are `found`."""
    ranks = positions(n, q)
    stand_in = np.full(n, found[ranks[0]])
    stand_in[ranks[-1] :] = found[ranks[-1]]
    return float(pd.Series(stand_in).quantile(q))


@dataclass
class Search:
    """The search for the values at some 0-based ranks of n values; `withheld` ranks are given up."""

    ranks: list[int]
    lo: list[int] = field(init=False)
    hi: list[int] = field(init=False)
    withheld: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.lo = [LOWEST - 1] * len(self.ranks)
        self.hi = [HIGHEST] * len(self.ranks)

    @property
    def done(self) -> bool:
        return all(self.hi[t] - self.lo[t] <= 1 or rank in self.withheld for t, rank in enumerate(self.ranks))

    @property
    def counts_needed(self) -> list[int]:
        """The count (rank + 1) each target's cut must reach."""
        return [rank + 1 for rank in self.ranks]

    def cuts(self) -> list[list[int]]:
        """Per target, WAYS − 1 increasing cut keys inside its interval (padded with its upper end; a withheld
        target's cuts all lie above every value)."""
        rows = []
        for rank, lo, hi in zip(self.ranks, self.lo, self.hi, strict=True):
            width = hi - lo
            inside = sorted({lo + width * i // WAYS for i in range(1, WAYS)} - {lo, hi}) if width > 1 else []
            if rank in self.withheld:
                inside, hi = [], HIGHEST
            rows.append(inside + [hi] * (WAYS - 1 - len(inside)))
        return rows

    def update(self, cuts: list[list[int]], counts: np.ndarray) -> None:
        """Narrow each interval from the cross-site counts (or their published comparisons; −1: withheld)."""
        for t, (row, needed) in enumerate(zip(counts, self.counts_needed, strict=True)):
            if row[-1] < 0:
                self.withheld.add(self.ranks[t])
                continue
            first = int(np.argmax(row[:-1] >= needed)) if np.any(row[:-1] >= needed) else None
            if first is None:
                self.lo[t] = cuts[t][-1]
            else:
                self.hi[t] = cuts[t][first]
                self.lo[t] = cuts[t][first - 1] if first else self.lo[t]

    def values(self) -> dict[int, float]:
        """The value at each rank found."""
        return {rank: value(hi) for rank, hi in zip(self.ranks, self.hi, strict=True) if rank not in self.withheld}
