"""The study cohort at a site: the protocol's structured filters applied to the site's table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analyses import columns as col
from analyses.contract import DataError
from workbench.protocol import Filter

_COMPARE = {
    "==": np.equal,
    "!=": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}


def select(table: pd.DataFrame, filters: Sequence[Filter]) -> pd.DataFrame:
    """Rows of `table` meeting every filter; a value comparison never selects a missing value."""
    keep = np.ones(len(table), dtype=bool)
    for number, condition in enumerate(filters, start=1):
        try:
            keep &= _mask(table, condition)
        except DataError as error:
            raise DataError(f"cohort filter #{number}: {error}") from None
    return table[keep]


def _mask(table: pd.DataFrame, condition: Filter) -> np.ndarray:
    series = col.require(table, condition.column)
    present = series.notna().to_numpy()
    if condition.op == "missing":
        return ~present
    if condition.op == "not missing":
        return present
    numeric = col.kind(table, condition.column) == col.NUMERIC
    values = condition.value if isinstance(condition.value, list) else [condition.value]
    if numeric:
        text = [v for v in values if isinstance(v, str)]
        if text:
            raise DataError(f"column '{condition.column}' is numeric but the filter compares it with '{text[0]}'")
        data: np.ndarray = series.to_numpy(dtype=float)
        wanted: list[object] = [float(v) for v in values]  # type: ignore[arg-type]
    else:
        if condition.op in ("<", "<=", ">", ">="):
            raise DataError(f"column '{condition.column}' holds text; '{condition.op}' needs a numeric column")
        data = series.astype(str).to_numpy()
        wanted = [col.label(v) for v in values]
    if condition.op in ("in", "not in"):
        inside = np.isin(data, wanted)
        return present & (inside if condition.op == "in" else ~inside)
    return present & _COMPARE[condition.op](data, wanted[0])


def row_keys(table: pd.DataFrame, row_id: str | None) -> pd.Series:
    """A 64-bit key per row: a hash of the `row_id` column (a patient's rows share it, e.g. the intervals of a
    time-varying Cox model, so the differencing guard counts patients), or of the whole row's content."""
    if row_id is None:
        return pd.util.hash_pandas_object(table, index=False)
    ids = col.require(table, row_id)
    if ids.isna().any():
        raise DataError(f"the policy's row_id column '{row_id}' has missing values")
    return pd.Series(pd.util.hash_array(ids.astype(str).to_numpy()), index=table.index)
