"""The first round of every analysis: column kinds, the levels in use and the follow-up axis.

No site sends a list of its own values. Column kinds (numeric or text) go in the clear; everything
else is additive and masked like any other reply: per column whose values the protocol declares,
a 0/1 per declared level (does any of the site's rows hold it?), and for survival analyses a 0/1
per bin of a coarse public ladder of follow-up (see `analyses.survival.follow_up`). The coordinator
learns only how many sites hold each level and reach each bin: it keeps the levels some site
holds, in sorted order as a pooled analysis would, and sizes the time axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analyses import columns as col
from analyses.contract import AnalysisError, Contribution, DataError, Query
from analyses.survival import follow_up as axis
from analyses.survival.follow_up import FollowUp

PHASE = "discover"

Declared = Mapping[str, Sequence[col.Level]]
"""The protocol's `[variables]`: the values each column may take."""


def query(
    declared: Declared,
    *,
    numeric: Sequence[str] = (),
    covariates: Sequence[str] = (),
    grouping: Sequence[str] = (),
    survival: FollowUp | None = None,
    binary_event: bool = True,
) -> Query:
    """A discovery query: `numeric` columns must be numbers; `covariates` may be numbers or (declared) text;
    `grouping` columns must have declared levels; `survival` sizes the time axis (its event column checked to be
    0/1 unless `binary_event` is False: competing causes)."""
    return Query(
        PHASE,
        {
            "numeric": list(numeric),
            "covariates": {name: _listed(declared.get(name)) for name in covariates},
            "grouping": {name: _listed(declared[name]) for name in grouping},
            "follow_up": [survival.duration, survival.event if binary_event else None, survival.grid_width]
            if survival
            else None,
        },
    )


def _listed(levels: Sequence[col.Level] | None) -> list[col.Level] | None:
    return None if levels is None else list(levels)


def local(rows: pd.DataFrame, params: dict[str, Any]) -> Contribution:
    """A site's column kinds (clear) and its 0/1 presence per declared level and per follow-up bin (masked)."""
    out: Contribution = {}
    for name in params["numeric"]:
        col.numeric(rows, name)
    for name, declared in params["covariates"].items():
        kind = col.kind(rows, name)
        out[f"kind:{name}"] = np.array([kind])
        if kind == col.CATEGORICAL and declared is None:
            raise DataError(
                f"column '{name}' holds text: declare the values it may take in the protocol's [variables] "
                f'(e.g. {name} = {{ levels = ["a", "b"] }})'
            )
        if declared is not None:
            out[f"levels:{name}"] = col.presence(rows, name, declared)
    for name, declared in params["grouping"].items():
        out[f"kind:{name}"] = np.array([col.kind(rows, name)])
        out[f"levels:{name}"] = col.presence(rows, name, declared)
    if params["follow_up"]:
        duration, event, width = params["follow_up"]
        if event is not None:
            col.events(rows, event)
        out["follow_up"] = axis.presence(axis.cells(col.durations(rows, duration), float(width)))
    return out


@dataclass(frozen=True)
class Schema:
    """What the sites' totals establish: kind per column, levels in use per categorical column, axis length."""

    kinds: dict[str, str] = field(default_factory=dict)
    levels: dict[str, list[col.Level]] = field(default_factory=dict)
    cells: int = 0
    """Cells 0 … cells − 1 of the follow-up axis (0 without a survival column)."""

    def params(self) -> dict[str, Any]:
        """The kinds, levels and axis length as query parameters for later rounds."""
        return {"kinds": self.kinds, "levels": self.levels, "cells": self.cells}


def read(total: Contribution, query: Query) -> Schema:
    """Interpret the totals of the sites' discovery replies to `query`."""
    kinds: dict[str, str] = {}
    for key, values in total.items():
        if key.startswith("kind:"):
            name = key.removeprefix("kind:")
            if len(values) != 1:
                raise AnalysisError(f"column '{name}' is numeric at some sites and text at others; make it consistent")
            kinds[name] = str(values[0])
    declared = {**query.params["covariates"], **query.params["grouping"]}
    levels = {
        name: sorted(level for level, sites in zip(declared[name], total[key], strict=True) if sites > 0)
        for name in declared
        if (key := f"levels:{name}") in total
    }
    cells = axis.axis_length(total["follow_up"]) if "follow_up" in total else 0
    return Schema(kinds=kinds, levels=levels, cells=cells)
