"""Reference distributions and tests for p-values and confidence intervals.

Only the coordinator needs them (to turn totals into p-values), never a node and never the light
commands; scipy is loaded on first use. The normal, t and χ² functions call the scipy.special
functions that scipy.stats' distributions compute them with (same values; scipy.special imports in a
fifth of the time); the tests of a contingency table use scipy.stats.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _special() -> Any:
    from scipy import special

    return special


def _stats() -> Any:
    from scipy import stats

    return stats


def norm_ppf(q: float) -> float:
    return float(_special().ndtri(q))


def norm_sf(x: Any) -> Any:
    return _special().ndtr(-np.asarray(x, dtype=float))[()]


def t_ppf(q: float, df: float) -> float:
    return float(_special().stdtrit(df, q))


def t_sf(x: Any, df: float) -> Any:
    return _special().stdtr(df, -np.asarray(x, dtype=float))[()]


def f_sf(x: float, dfn: float, dfd: float) -> float:
    return float(_special().fdtrc(dfn, dfd, x))


def pearson_p(r: float, n: float) -> float:
    """Two-sided p of a Pearson correlation r of n pairs, as scipy's `pearsonr` computes it (a beta distribution
    on [-1, 1] with shape n/2 − 1)."""
    shape = n / 2 - 1
    return float(min(1.0, 2 * _special().betainc(shape, shape, (1 - abs(r)) / 2)))


def chi2_sf(x: float, df: float) -> float:
    return 1.0 if x <= 0 else float(_special().chdtrc(df, x))


def chi2_contingency(table: np.ndarray, correction: bool) -> Any:
    """Pearson's χ² test of a contingency table (scipy's result object)."""
    return _stats().chi2_contingency(table, correction=correction)


def fisher_exact(table: np.ndarray) -> Any:
    """Fisher's exact test of a 2×2 table (scipy's result object)."""
    return _stats().fisher_exact(table)
