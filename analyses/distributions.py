"""Reference distributions and tests for p-values and confidence intervals.

scipy.stats takes about a second to import, and only the coordinator needs it (to turn totals into
p-values), never a node and never the light commands; it is loaded on first use.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _stats() -> Any:
    from scipy import stats

    return stats


def norm_ppf(q: float) -> float:
    return float(_stats().norm.ppf(q))


def norm_sf(x: Any) -> Any:
    return _stats().norm.sf(x)


def t_ppf(q: float, df: float) -> float:
    return float(_stats().t.ppf(q, df))


def t_sf(x: Any, df: float) -> Any:
    return _stats().t.sf(x, df)


def chi2_sf(x: float, df: float) -> float:
    return float(_stats().chi2.sf(x, df))


def chi2_contingency(table: np.ndarray, correction: bool) -> Any:
    """Pearson's χ² test of a contingency table (scipy's result object)."""
    return _stats().chi2_contingency(table, correction=correction)


def fisher_exact(table: np.ndarray) -> Any:
    """Fisher's exact test of a 2×2 table (scipy's result object)."""
    return _stats().fisher_exact(table)
