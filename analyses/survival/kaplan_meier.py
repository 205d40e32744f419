"""Kaplan–Meier survival curves per group, equal to lifelines' `KaplanMeierFitter`.

Rounds: discover (group levels in use, axis length) → counts per axis cell and group.
Confidence intervals use Greenwood's variance on the log(−log) scale, as lifelines does.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from analyses import columns as col
from analyses import discovery, distributions
from analyses.contract import Contribution, Plan, Query
from analyses.disclosure import DISCOVERY, Control, Item
from analyses.spec import Confidence, Spec
from analyses.survival import counts
from analyses.survival.follow_up import FollowUp

ALL = "all"
"""Group label when the analysis has no `group`."""

MANIFEST = (
    *DISCOVERY,
    Item("counts", "events", "(groups, time cells)", "events per group and time cell", Control.MINIMUM,
         per_time=True),
    Item("counts", "removed", "(groups, time cells)", "events + censorings per group and time cell", Control.MINIMUM,
         per_time=True),
    Item("counts", "n_dropped", "(1,)", "rows left out for a missing value"),
    Item("counts", "guard:group_sizes", "(groups,)", "patients per group", Control.GUARD),
)  # fmt: skip


class KaplanMeierSpec(Spec, FollowUp, Confidence):
    """Survival curves of `duration`/`event`, optionally one per level of `group`."""

    type: Literal["kaplan_meier"]
    group: str | None = None

    def columns(self) -> list[str]:
        return [self.duration, self.event, *([self.group] if self.group else [])]

    def grouping(self) -> list[str]:
        return [self.group] if self.group else []


def plan(spec: KaplanMeierSpec, declared: discovery.Declared) -> Plan:
    ask = discovery.query(declared, grouping=spec.grouping(), survival=spec)
    schema = discovery.read((yield ask), ask)
    total = yield Query("counts", schema.params())
    labels = [col.label(level) for level in schema.levels[spec.group]] if spec.group else [ALL]
    times = np.arange(schema.cells) * spec.grid_width
    curves = {name: curve(times, total["events"][g], total["removed"][g], spec.alpha) for g, name in enumerate(labels)}
    return {
        "type": "kaplan_meier",
        "n": int(total["removed"].sum()),
        "n_dropped": int(total["n_dropped"][0]),
        "events": int(total["events"].sum()),
        "group": spec.group,
        "time_grid": spec.time_grid,
        "time_resolution": spec.grid_width,
        "groups": curves,
    }


def curve(times: np.ndarray, events: np.ndarray, removed: np.ndarray, alpha: float) -> dict[str, Any]:
    """lifelines' estimate on its timeline: 0 and every distinct duration of the group."""
    keep = removed > 0
    timeline = np.union1d([0.0], times[keep])
    where = np.searchsorted(timeline, times[keep])
    d = np.zeros(len(timeline), dtype=np.int64)
    r = np.zeros(len(timeline), dtype=np.int64)
    d[where], r[where] = events[keep], removed[keep]
    n = counts.at_risk(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        survival = np.exp(np.cumsum(np.log(n - d) - np.log(n)))
        greenwood = np.cumsum(np.where(n == d, 0.0, d / (n * (n - d))))
        v = np.log(survival)
        z = distributions.norm_ppf(1 - alpha / 2)
        lower = np.exp(-np.exp(np.log(-v) - z * np.sqrt(greenwood) / v))
        upper = np.exp(-np.exp(np.log(-v) + z * np.sqrt(greenwood) / v))
    below = np.flatnonzero(survival <= 0.5)
    return {
        "time": timeline.tolist(),
        "survival": survival.tolist(),
        "ci_lower": np.nan_to_num(lower, nan=1.0).tolist(),
        "ci_upper": np.nan_to_num(upper, nan=1.0).tolist(),
        "at_risk": n.tolist(),
        "events": d.tolist(),
        "censored": (r - d).tolist(),
        "median": float(timeline[below[0]]) if below.size else None,
    }


def local(spec: KaplanMeierSpec, rows: pd.DataFrame, query: Query) -> Contribution:
    cell, cells = col.cell_codes(rows, spec.grouping(), query.params["levels"])
    time, event = spec.follow_up(rows)
    out = counts.local(time, event, cell, cells, query.params["cells"])
    group_sizes = out["removed"].sum(axis=1)
    return {**out, "guard:group_sizes": group_sizes}
