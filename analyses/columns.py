"""Reading analysis columns from a site's cohort rows, with errors a researcher can act on.

Row labels of the cohort frame are the table's line numbers (set by the node's
table loader), so an error can point at the offending line.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from analyses.contract import DataError

NUMERIC = "numeric"
CATEGORICAL = "categorical"

Level = float | str


def require(frame: pd.DataFrame, name: str) -> pd.Series:
    """The column `name`, or a DataError listing what the table does have."""
    if name not in frame.columns:
        known = [str(c) for c in frame.columns]
        hint = difflib.get_close_matches(name, known, n=1)
        detail = f"did you mean '{hint[0]}'?" if hint else f"it has: {', '.join(known[:30])}"
        raise DataError(f"column '{name}' is not in the cohort table ({detail}); check the protocol's spelling")
    return frame[name]


def kind(frame: pd.DataFrame, name: str) -> str:
    """`numeric` or `categorical`; a text column that is mostly numbers is an error, not a category."""
    series = require(frame, name)
    if is_numeric_dtype(series) or is_bool_dtype(series):
        return NUMERIC
    present = series.dropna()
    as_number = pd.to_numeric(present, errors="coerce")
    if as_number.notna().any() and as_number.isna().any():
        line = as_number.index[as_number.isna()][0]
        raise DataError(
            f"column '{name}' mixes numbers and text ('{present[line]}' at line {line}); correct or blank that value"
        )
    return CATEGORICAL


def numeric(frame: pd.DataFrame, name: str) -> np.ndarray:
    """Float values of a column that must be numeric."""
    if kind(frame, name) != NUMERIC:
        sample = frame[name].dropna().iloc[0]
        raise DataError(f"column '{name}' must be numeric but holds text (e.g. '{sample}')")
    return frame[name].to_numpy(dtype=float)


def events(frame: pd.DataFrame, name: str) -> np.ndarray:
    """An event indicator: 1 = event observed, 0 = censored."""
    values = numeric(frame, name)
    bad = values[(values != 0) & (values != 1)]
    if bad.size:
        raise DataError(f"event column '{name}' must be 0 (censored) or 1 (event); found {bad[0]:g}")
    return values


def durations(frame: pd.DataFrame, name: str) -> np.ndarray:
    """Non-negative follow-up times."""
    values = numeric(frame, name)
    if (values < 0).any():
        raise DataError(f"duration column '{name}' has a negative time ({values[values < 0][0]:g})")
    return values


def complete_cases(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Rows with no missing value in `columns` (listwise deletion); `frame` itself when none is missing."""
    names = list(dict.fromkeys(columns))
    for name in names:
        require(frame, name)
    if not names:
        return frame
    keep = np.ones(len(frame), dtype=bool)
    for name in names:
        keep &= frame[name].notna().to_numpy()
    return frame if keep.all() else frame[keep]


def presence(frame: pd.DataFrame, name: str, declared: Sequence[Level], strict: bool = True) -> np.ndarray:
    """1 for each declared level some row holds, else 0 (what a site sends instead of its own levels).

    With `strict`, a present value the protocol does not declare is a DataError naming the column;
    the value itself goes only into the error's `private` part, for the site's own log.
    """
    numeric_column = kind(frame, name) == NUMERIC
    if declared and isinstance(declared[0], str) == numeric_column:
        held, declared_as = ("numbers", "text") if numeric_column else ("text", "numbers")
        raise DataError(f"column '{name}' holds {held} here but the protocol's [variables] '{name}' levels are "
                        f"{declared_as}; declare them as the column holds them")  # fmt: skip
    held = set(present(frame, name))
    wanted = [float(level) if numeric_column else str(level) for level in declared]
    unknown = sorted(held.difference(wanted))
    if strict and unknown:
        raise DataError(
            f"column '{name}' holds a value the protocol does not declare in its [variables] '{name}' levels; "
            "the site's data steward finds it in the node's audit log",
            private=f"column '{name}': undeclared value(s) {', '.join(label(v) for v in unknown[:5])}",
        )
    return np.array([level in held for level in wanted], dtype=np.int64)


def present(frame: pd.DataFrame, name: str) -> list[Level]:
    """Distinct non-missing values: floats for a numeric column, text otherwise."""
    values = require(frame, name).dropna()
    if kind(frame, name) == NUMERIC:
        return sorted(set(values.to_numpy(dtype=float).tolist()))
    return sorted(set(values.astype(str).tolist()))


def codes(frame: pd.DataFrame, name: str, levels: Sequence[Level]) -> np.ndarray:
    """Index of each row's value in the agreed `levels` (all rows must have one)."""
    values = frame[name]
    if kind(frame, name) == NUMERIC:
        keys = values.to_numpy(dtype=float)
        lookup: dict[Any, int] = {float(level): i for i, level in enumerate(levels)}
    else:
        keys = values.astype(str).to_numpy()
        lookup = {str(level): i for i, level in enumerate(levels)}
    try:
        return np.array([lookup[key] for key in keys], dtype=np.int64)
    except KeyError:
        raise DataError(f"column '{name}' holds a value outside the study's agreed levels: did the table change "
                        "during the study?") from None  # fmt: skip


def label(level: Level) -> str:
    """Text for a level: `2` not `2.0` for whole numbers."""
    if isinstance(level, float) and level.is_integer():
        return str(int(level))
    return str(level)


def design_names(
    covariates: Sequence[str], kinds: Mapping[str, str], levels: Mapping[str, Sequence[Level]]
) -> list[str]:
    """Column names of the design matrix; categorical covariates give `name[T.level]` dummies."""
    names: list[str] = []
    for name in covariates:
        if kinds[name] == NUMERIC:
            names.append(name)
        else:
            names.extend(f"{name}[T.{label(level)}]" for level in levels[name][1:])
    return names


def design_matrix(
    frame: pd.DataFrame, covariates: Sequence[str], kinds: Mapping[str, str], levels: Mapping[str, Sequence[Level]]
) -> np.ndarray:
    """Numeric covariates as they are; categorical ones dummy-coded against their first level."""
    blocks: list[np.ndarray] = []
    for name in covariates:
        if kind(frame, name) != kinds[name]:
            raise DataError(f"column '{name}' is {kind(frame, name)} here but {kinds[name]} at other sites")
        if kinds[name] == NUMERIC:
            blocks.append(frame[name].to_numpy(dtype=float)[:, None])
        else:
            index = codes(frame, name, levels[name])
            blocks.append((index[:, None] == np.arange(1, len(levels[name]))[None, :]).astype(float))
    return np.hstack(blocks) if blocks else np.zeros((len(frame), 0))


def cell_codes(
    frame: pd.DataFrame, names: Sequence[str], levels: Mapping[str, Sequence[Level]]
) -> tuple[np.ndarray, int]:
    """One index per row for the combination of `names`' levels, and the number of combinations."""
    code = np.zeros(len(frame), dtype=np.int64)
    cells = 1
    for name in names:
        code = code * len(levels[name]) + codes(frame, name, levels[name])
        cells *= len(levels[name])
    return code, cells


def category_counts(
    frame: pd.DataFrame,
    covariates: Sequence[str],
    kinds: Mapping[str, str],
    levels: Mapping[str, Sequence[Level]],
    binary: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Counts a regression reveals about categories (DataSHIELD's guard), to check against the minimum.

    Rows per agreed level of each text covariate and of each numeric covariate with two agreed levels
    (a declared binary covariate), and per value of each 0/1 array in `binary` (a binary outcome). The
    agreed levels give every site the same shape, so the counts can also be summed under masking.
    """
    found: list[np.ndarray] = []
    for name in covariates:
        agreed = levels.get(name)
        if agreed is not None and (kinds[name] == CATEGORICAL or len(agreed) == 2):
            found.append(np.bincount(codes(frame, name, agreed), minlength=len(agreed)))
    found += [np.bincount(values.astype(np.int64), minlength=2) for values in binary]
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
