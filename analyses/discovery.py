"""The first round of every analysis: agree on column kinds, levels and the time grid.

This is the only round whose replies are unions of distinct values rather than
sums. Sites report, over their complete cases, whether each covariate is numeric
or categorical, the distinct levels of categorical and grouping columns and,
for survival analyses, the distinct (event) times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from analyses import columns as col
from analyses.contract import AnalysisError, Contribution, Query
from analyses.disclosure import time_guard
from analyses.survival.follow_up import coarsen

PHASE = "discover"


def query(
    *,
    used: Sequence[str],
    numeric: Sequence[str] = (),
    covariates: Sequence[str] = (),
    grouping: Sequence[str] = (),
    survival: tuple[str, str] | None = None,
    grid: float | None = None,
    times: Literal["all", "events"] | None = None,
    cells: Sequence[str] = (),
) -> Query:
    """A discovery query. `used` are all columns of the analysis (for complete cases).

    With `times`, sites report their distinct (event) times on the `grid`; the node then
    checks removals per time cell and per level combination of the `cells` columns.
    """
    return Query(
        PHASE,
        {
            "used": list(dict.fromkeys(used)),
            "numeric": list(numeric),
            "covariates": list(covariates),
            "grouping": list(grouping),
            "survival": list(survival) if survival else None,
            "grid": grid,
            "times": times,
            "cells": list(cells),
        },
        reduce="union",
    )


def local(frame: pd.DataFrame, params: dict[str, Any]) -> Contribution:
    """A site's kinds, levels and distinct times over its complete cases."""
    rows = col.complete_cases(frame, params["used"])
    out: Contribution = {}
    for name in params["numeric"]:
        col.numeric(rows, name)
    for name in params["covariates"]:
        kind = col.kind(rows, name)
        out[f"kind:{name}"] = np.array([kind])
        if kind == col.CATEGORICAL:
            out[f"levels:{name}"] = col.distinct(rows, name)
    for name in params["grouping"]:
        out[f"kind:{name}"] = np.array([col.kind(rows, name)])
        out[f"levels:{name}"] = col.distinct(rows, name)
    if params["survival"]:
        duration, event = params["survival"]
        time = coarsen(col.durations(rows, duration), params["grid"])
        observed = col.events(rows, event)
        if params["times"]:
            times = np.unique(time if params["times"] == "all" else time[observed == 1])
            out["times"] = times
            local_cells = [col.distinct(rows, name).tolist() for name in params["cells"]]
            cell, _ = col.cell_codes(rows, params["cells"], dict(zip(params["cells"], local_cells, strict=True)))
            out["guard:removals"] = time_guard(time, cell, times)
    return out


@dataclass(frozen=True)
class Schema:
    """What the sites agreed on: kind per column, levels per categorical/grouping column, times."""

    kinds: dict[str, str] = field(default_factory=dict)
    levels: dict[str, list[col.Level]] = field(default_factory=dict)
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def params(self) -> dict[str, Any]:
        """The kinds and levels as query parameters for later rounds."""
        return {"kinds": self.kinds, "levels": self.levels}


def read(total: Contribution) -> Schema:
    """Interpret the union of the sites' discovery replies."""
    kinds: dict[str, str] = {}
    levels: dict[str, list[col.Level]] = {}
    for key, values in total.items():
        prefix, _, name = key.partition(":")
        if prefix == "kind":
            if len(values) != 1:
                raise AnalysisError(f"column '{name}' is numeric at some sites and text at others; make it consistent")
            kinds[name] = str(values[0])
        elif prefix == "levels":
            levels[name] = [str(v) if values.dtype.kind in "US" else float(v) for v in values]
    return Schema(kinds=kinds, levels=levels, times=np.asarray(total.get("times", np.zeros(0)), dtype=float))
