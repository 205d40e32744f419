"""Cumulative incidence per cause with competing risks (Aalen–Johansen), per group, equal to lifelines'
`AalenJohansenFitter` (with its variance and confidence interval).

Rounds: discover (column kinds, group levels in use, the follow-up axis as Kaplan–Meier's) → counts per axis cell
and group: events per cause and removals (events + censorings).
With S the all-cause Kaplan–Meier estimate, n and d the number at risk and all-cause events, dₖ cause k's:
  Fₖ(t) = Σ_{tᵢ≤t} S(tᵢ₋₁) dₖᵢ / nᵢ
  Var Fₖ(t) = Σ (Fₖ(t) − Fₖ(tᵢ))² dᵢ / (nᵢ(nᵢ − dᵢ)) + Σ S(tᵢ₋₁)² dₖᵢ(nᵢ − dₖᵢ) / nᵢ³
              − 2 Σ (Fₖ(t) − Fₖ(tᵢ)) S(tᵢ₋₁) dₖᵢ / nᵢ²   (Collett, as lifelines computes it)
and the interval exp(−exp(log(−log F) ± z·√Var / (F |log F|))), on lifelines' timeline: 0 and every distinct
duration of the group. Tied times, also between causes, enter as tied counts: the estimator lifelines computes
when it does not jitter them apart (it jitters durations whenever two causes share a time). Where lifelines is
undefined or quirky: the interval is [0, 0] where F = 0; a last time at which every patient still at risk has
an event adds no first-term variance (0·∞ = 0, as Greenwood's sum of Kaplan–Meier); events at duration 0
count in F(0) (lifelines sets F(0) = 0 but counts them in S and the variance); ci_lower ≤ cif ≤ ci_upper
(lifelines' column named "upper" holds the lower bound).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from analyses import columns as col
from analyses import discovery, distributions
from analyses.contract import Contribution, DataError, Plan, Query
from analyses.disclosure import DISCOVERY, Control, Item
from analyses.spec import Confidence, Spec
from analyses.survival import counts, follow_up
from analyses.survival.follow_up import FollowUp
from analyses.survival.kaplan_meier import ALL

MANIFEST = (
    *DISCOVERY,
    Item("counts", "events", "(groups, causes, time cells)", "events per group, cause and time cell", Control.MINIMUM,
         per_time=True),
    Item("counts", "removed", "(groups, time cells)", "events + censorings per group and time cell", Control.MINIMUM,
         per_time=True),
    Item("counts", "n_dropped", "(1,)", "rows left out for a missing value"),
    Item("counts", "guard:group_sizes", "(groups,)", "patients per group", Control.GUARD),
)  # fmt: skip


class CumulativeIncidenceSpec(Spec, FollowUp, Confidence):
    """Cumulative incidence of each of `causes` (the `event` column's codes; 0 = censored), optionally per `group`."""

    type: Literal["cumulative_incidence"]
    causes: list[int] = Field(min_length=1, description="the event column's codes of the competing causes")
    cause_names: list[str] | None = Field(None, description="a name per cause, in the order of `causes`")
    group: str | None = None

    @model_validator(mode="after")
    def _check(self) -> CumulativeIncidenceSpec:
        if min(self.causes) < 1:
            raise ValueError("causes are the event column's codes 1, 2, …; 0 means censored and is not a cause")
        if len(set(self.causes)) < len(self.causes):
            raise ValueError("each cause may be listed once in causes")
        if self.cause_names is not None and len(self.cause_names) != len(self.causes):
            raise ValueError(f"cause_names has {len(self.cause_names)} names for {len(self.causes)} causes")
        if self.cause_names is not None and len(set(self.cause_names)) < len(self.cause_names):
            raise ValueError("each name may be used once in cause_names")
        return self

    def columns(self) -> list[str]:
        return [self.duration, self.event, *([self.group] if self.group else [])]

    def grouping(self) -> list[str]:
        return [self.group] if self.group else []

    @property
    def labels(self) -> list[str]:
        """The causes' names in results: `cause_names`, else the codes."""
        return self.cause_names or [str(code) for code in self.causes]

    def follow_up(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Each row's cell on the time axis and its cause: 0 censored, i for the i-th of `causes`."""
        code = col.numeric(rows, self.event)
        known = np.array([0, *self.causes], dtype=float)
        undeclared = np.unique(code[~np.isin(code, known)])
        if undeclared.size:
            raise DataError(
                f"event column '{self.event}' holds a code the analysis does not declare (0 = censored, causes = "
                f"{self.causes}); declare every cause or recode the column; the site's data steward finds it in the "
                "node's audit log",
                private=f"column '{self.event}': undeclared code(s) {', '.join(f'{v:g}' for v in undeclared[:5])}",
            )
        order = np.argsort(known)
        cause = order[np.searchsorted(known, code, sorter=order)]
        return follow_up.cells(col.durations(rows, self.duration), self.grid_width), cause


def plan(spec: CumulativeIncidenceSpec, declared: discovery.Declared) -> Plan:
    ask = discovery.query(declared, numeric=[spec.duration, spec.event], grouping=spec.grouping(), survival=spec,
                          binary_event=False)  # fmt: skip
    schema = discovery.read((yield ask), ask)
    cells = schema.cells
    total = yield Query("counts", schema.params())
    groups = [col.label(level) for level in schema.levels[spec.group]] if spec.group else [ALL]
    times = np.arange(cells) * spec.grid_width
    return {
        "type": "cumulative_incidence",
        "n": int(total["removed"].sum()),
        "n_dropped": int(total["n_dropped"][0]),
        "events": dict(zip(spec.labels, total["events"].sum(axis=(0, 2)).tolist(), strict=True)),
        "group": spec.group,
        "causes": spec.labels,
        "time_grid": spec.time_grid,
        "time_resolution": spec.grid_width,
        "groups": {
            name: dict(
                zip(spec.labels, curves(times, total["events"][g], total["removed"][g], spec.alpha), strict=True)
            )
            for g, name in enumerate(groups)
        },
    }


def curves(times: np.ndarray, events: np.ndarray, removed: np.ndarray, alpha: float) -> list[dict[str, Any]]:
    """Per cause (rows of `events`), lifelines' estimate, variance and interval on its timeline."""
    keep = removed > 0
    timeline = np.union1d([0.0], times[keep])
    where = np.searchsorted(timeline, times[keep])
    d_k = np.zeros((len(events), len(timeline)))
    r = np.zeros(len(timeline), dtype=np.int64)
    d_k[:, where], r[where] = events[:, keep], removed[keep]
    n = counts.at_risk(r).astype(float)
    d = d_k.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        survival = np.exp(np.cumsum(np.log(n - d) - np.log(n)))
        lagged = np.concatenate([[1.0], survival[:-1]])
        cif = np.cumsum(d_k / n * lagged, axis=1)
        a = np.where(n > d, d / n / (n - d), 0.0)
        c = lagged * d_k / n**2
        first = np.cumsum(a * cif**2, axis=1) - np.cumsum(2 * a * cif, axis=1) * cif + np.cumsum(a) * cif**2
        second = np.cumsum(lagged**2 * d_k * (n - d_k) / n**3, axis=1)
        third = np.cumsum(c, axis=1) * cif - np.cumsum(c * cif, axis=1)
        variance = first + second - 2 * third
        z = distributions.norm_ppf(1 - alpha / 2)
        log_log, se = np.log(-np.log(cif)), np.sqrt(variance) / (cif * np.abs(np.log(cif)))
        lower = np.exp(-np.exp(log_log + z * se))
        upper = np.exp(-np.exp(log_log - z * se))
    return [
        {
            "time": timeline.tolist(),
            "cif": cif[k].tolist(),
            "variance": variance[k].tolist(),
            "ci_lower": np.where(np.isfinite(lower[k]), lower[k], cif[k]).tolist(),
            "ci_upper": np.where(np.isfinite(upper[k]), upper[k], cif[k]).tolist(),
            "at_risk": n.astype(np.int64).tolist(),
            "events": d_k[k].astype(np.int64).tolist(),
        }
        for k in range(len(events))
    ]


def local(spec: CumulativeIncidenceSpec, rows: pd.DataFrame, query: Query) -> Contribution:
    time, cause = spec.follow_up(rows)
    cell, cells = col.cell_codes(rows, spec.grouping(), query.params["levels"])
    causes = len(spec.causes)
    table = counts.local(time, (cause > 0).astype(float), cell * causes + np.maximum(cause - 1, 0), cells * causes,
                         query.params["cells"])  # fmt: skip
    removed = table["removed"].reshape(cells, causes, -1).sum(axis=1)
    return {"events": table["events"].reshape(cells, causes, -1), "removed": removed,
            "guard:group_sizes": removed.sum(axis=1)}  # fmt: skip
