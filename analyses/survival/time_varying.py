"""Cox regression with time-varying covariates on (start, stop] rows, equal to lifelines' `CoxTimeVaryingFitter`.

A patient spans several rows, each an interval (start, stop] with the covariates' values during it and
`event` = 1 on the row that ends with the event. Row i is at risk at event time t when startᵢ < t ≤ stopᵢ,
so each risk-set sum is the sum over stopᵢ ≥ t minus the sum over startᵢ ≥ t (`risk_sets.sums` with entries).
Rounds: discover (kinds, levels in use, axis length from the stop times) → moments (patients, rows, events,
Σx and Σx² over rows for lifelines' standardization, events per time cell: their totals give the pooled
event times) → Newton steps on standardized covariates: per pooled event time S0, S1, S2 and the tied-death
sums D0, D1, D2 (Efron ties, lifelines' only method).
Stratified by `"site"`: each site sends only its log-likelihood, gradient and Hessian over its own risk sets.
An L2 `penalizer` λ subtracts N·λ·½·Σβ_s² with N the number of rows, as lifelines does.
Guards count patients where they count people: n, the saturation and category guards, patients with an
event, and the patients whose rows change the risk set between consecutive event times.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from analyses import columns as col
from analyses import discovery
from analyses.contract import AnalysisError, Contribution, DataError, Plan, Query
from analyses.disclosure import DISCOVERY, Control, Item
from analyses.spec import Confidence, Spec
from analyses.survival import counts, cox, risk_sets
from analyses.survival.cox import SITE
from analyses.survival.follow_up import FollowUp, TimeGrid, cells

MANIFEST = (
    *DISCOVERY,
    Item("moments", "n", "(1,)", "patients with a used row", Control.MINIMUM),
    Item("moments", "n_rows", "(1,)", "rows ((start, stop] intervals) used", Control.MINIMUM),
    Item("moments", "n_dropped", "(1,)", "rows left out for a missing value"),
    Item("moments", "events", "(1,)", "number of events", Control.MINIMUM),
    Item("moments", "guard:event_patients", "(1,)", "patients with an event", Control.GUARD),
    Item("moments", "guard:categories", "(k,)", "patients with a row in each covariate category", Control.GUARD),
    Item("moments", "guard:saturation", "(2,)", "patients and parameters", Control.SATURATION),
    Item("moments", "deaths", "(strata, time cells)", "events per stratum and time cell (their totals give the "
         "pooled event times)", Control.MINIMUM, per_time=True),
    Item("moments", "sum_x", "(p,)", "sum of each covariate over rows (for standardization)"),
    Item("moments", "sum_x2", "(p,)", "sum of squares of each covariate over rows (for standardization)"),
    *cox.RISK_SET_ITEMS,
    Item("newton", "guard:changes", "(strata, event times + 1)", "patients entering, leaving or changing "
         "covariates in the risk set between event times", Control.GUARD, per_time=True),
    *cox.SITE_ITEMS,
)  # fmt: skip


class TimeVaryingCoxSpec(Spec, Confidence):
    """Hazard ratios of `covariates` from (`start`, `stop`] rows of each `patient`, `event` on the row it ends."""

    type: Literal["cox_time_varying"]
    patient: str = Field(description="column identifying the patient of each row")
    start: str
    stop: str
    event: str
    covariates: list[str] = Field(min_length=1)
    penalizer: float = Field(0.0, ge=0)
    strata: list[str] = Field(default_factory=list)
    time_grid: TimeGrid = Field(
        None, description="resolution: a named grid (in days) or a cell width in the times' unit (default 1)"
    )

    @field_validator("time_grid")
    @classmethod
    def _positive(cls, value: TimeGrid) -> TimeGrid:
        return FollowUp._positive(value)

    @property
    def axis(self) -> FollowUp:
        """The follow-up axis, sized by the stop times."""
        return FollowUp(duration=self.stop, event=self.event, time_grid=self.time_grid)

    @property
    def grid_width(self) -> float:
        """Width of one cell of the time axis, in the times' unit."""
        return self.axis.grid_width

    @property
    def strata_columns(self) -> list[str]:
        return [name for name in self.strata if name != SITE]

    def columns(self) -> list[str]:
        return [self.patient, self.start, self.stop, self.event, *self.covariates, *self.strata_columns]

    def grouping(self) -> list[str]:
        return self.strata_columns


def plan(spec: TimeVaryingCoxSpec, declared: discovery.Declared) -> Plan:
    by_site = SITE in spec.strata
    found = discovery.query(declared, numeric=[spec.start, spec.stop, spec.event], covariates=spec.covariates,
                            grouping=spec.grouping(), survival=None if by_site else spec.axis)  # fmt: skip
    schema = discovery.read((yield found), found)
    moments = yield Query("moments", schema.params())
    times = [] if by_site else np.flatnonzero(moments["deaths"].sum(axis=0)).tolist()
    base = {**schema.params(), "times": times}
    rows, events = int(moments["n_rows"][0]), int(moments["events"][0])
    if events == 0:
        raise AnalysisError("no events among the complete rows")
    fit = yield from cox.newton(spec, "efron", schema, moments, rows, base)
    return {"type": "cox_time_varying", "n": int(moments["n"][0]), "n_rows": rows,
            "n_dropped": int(moments["n_dropped"][0]), "events": events, **fit}  # fmt: skip


def local(spec: TimeVaryingCoxSpec, rows: pd.DataFrame, query: Query) -> Contribution:
    params = query.params
    x = col.design_matrix(rows, spec.covariates, params["kinds"], params["levels"])
    patient, start, stop, event = intervals(spec, rows)
    stratum, strata = col.cell_codes(rows, spec.strata_columns, params["levels"])
    patients = len(np.unique(patient))
    if query.phase == "moments":
        out = {
            "n": np.array([patients]),
            "n_rows": np.array([len(rows)]),
            "events": np.array([int(event.sum())]),
            "guard:event_patients": np.array([len(np.unique(patient[event == 1]))]),
            "guard:categories": _patients_per_category(spec, rows, params["kinds"], params["levels"]),
            "guard:saturation": np.array([patients, x.shape[1]]),
            "sum_x": x.sum(axis=0),
            "sum_x2": (x**2).sum(axis=0),
        }
        if SITE not in spec.strata:
            out["deaths"] = counts.local(stop, event, stratum, strata, params["cells"])["events"]
        return out
    standardized = (x - np.asarray(params["mean"])) / np.asarray(params["sd"])
    beta = np.asarray(params["beta"], dtype=float)
    if SITE not in spec.strata:
        times = np.asarray(params["times"], dtype=np.int64)
        sums = risk_sets.sums(stop, event, standardized, beta, stratum, strata, times, entry=start)
        return {**sums, "guard:changes": changes(patient, start, stop, x, stratum, strata, times)}
    own_times = np.unique(stop[event == 1])
    loglik, gradient, hessian = risk_sets.partial_likelihood(
        risk_sets.sums(stop, event, standardized, beta, stratum, strata, own_times, entry=start), beta, "efron"
    )
    return {"loglik": np.array([loglik]), "gradient": gradient, "hessian": hessian}


def intervals(spec: TimeVaryingCoxSpec, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row's patient code, start and stop cells on the time axis, and 0/1 event; DataError for rows that
    are not (start, stop] intervals or overlap another row of their patient (counts only, never ids)."""
    patient = pd.factorize(col.require(rows, spec.patient))[0]
    begin, end = col.durations(rows, spec.start), col.durations(rows, spec.stop)
    event = col.events(rows, spec.event)
    empty = int(np.sum(begin >= end))
    if empty:
        raise DataError(f"column '{spec.stop}': rows end at or before their '{spec.start}'; each row is an interval "
                        "(start, stop] with start < stop", private=f"{empty} rows")  # fmt: skip
    order = np.lexsort((begin, patient))
    overlap = (patient[order][1:] == patient[order][:-1]) & (begin[order][1:] < end[order][:-1])
    if overlap.any():
        patients = len(np.unique(patient[order][1:][overlap]))
        raise DataError(f"column '{spec.patient}': patients have overlapping ('{spec.start}', '{spec.stop}'] rows; a "
                        "patient's rows must not overlap", private=f"{patients} patients")  # fmt: skip
    width = spec.grid_width
    start, stop = cells(begin, width), cells(end, width)
    collapsed = int(np.sum((start >= stop) & (event == 1)))
    if collapsed:
        raise DataError(f"column '{spec.stop}': event rows start and end in the same time_grid cell (width "
                        f"{width:g}); declare a finer time_grid", private=f"{collapsed} event rows")  # fmt: skip
    return patient, start, stop, event


def _patients_per_category(
    spec: TimeVaryingCoxSpec, rows: pd.DataFrame, kinds: dict[str, str], levels: dict[str, list[col.Level]]
) -> np.ndarray:
    """Patients with a row in each agreed level of each text or declared binary covariate (DataSHIELD's guard)."""
    found = [col.category_counts(rows.drop_duplicates([spec.patient, name]), [name], kinds, levels)
             for name in spec.covariates]  # fmt: skip
    return np.concatenate(found)


def changes(
    patient: np.ndarray,
    start: np.ndarray,
    stop: np.ndarray,
    x: np.ndarray,
    stratum: np.ndarray,
    strata: int,
    times: np.ndarray,
) -> np.ndarray:
    """Patients whose rows change the risk set, per stratum and gap between event times (gap j: between the risk
    sets at tⱼ₋₁ and tⱼ; gap 0 before t₀, the last after the last event time). A row that follows its patient's
    previous row seamlessly with the same covariates and stratum changes nothing (episodes split at fixed times)."""
    order = np.lexsort((start, patient))
    who, begin, end, row, cell = patient[order], start[order], stop[order], x[order], stratum[order]
    seamless = ((who[1:] == who[:-1]) & (begin[1:] == end[:-1]) & (cell[1:] == cell[:-1])
                & np.all(row[1:] == row[:-1], axis=1))  # fmt: skip
    enters, leaves = np.ones(len(who), dtype=bool), np.ones(len(who), dtype=bool)
    enters[1:], leaves[:-1] = ~seamless, ~seamless
    moved = np.concatenate([np.flatnonzero(enters), np.flatnonzero(leaves)])
    gap = np.concatenate([np.searchsorted(times, begin[enters], "right"), np.searchsorted(times, end[leaves], "right")])
    key = np.unique(np.stack([cell[moved], gap, who[moved]]), axis=1)
    out = np.zeros((strata, len(times) + 1), dtype=np.int64)
    np.add.at(out, (key[0], key[1]), 1)
    return out
