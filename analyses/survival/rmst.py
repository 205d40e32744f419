"""Restricted mean survival time up to τ per group (the area under the Kaplan–Meier curve, equal to lifelines'
`restricted_mean_survival_time`), its standard error and the difference between two groups.

Rounds: those of Kaplan–Meier (the same counts per axis cell and group); the rest is the coordinator's.
The variance is the Greenwood-type estimator Σ_{tᵢ ≤ τ} Aᵢ² dᵢ / (nᵢ (nᵢ − dᵢ)), Aᵢ = ∫_{tᵢ}^τ S(u) du
(Klein & Moeschberger 4.5; R's survRM2).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from analyses import columns as col
from analyses import discovery, distributions
from analyses.contract import AnalysisError, Contribution, Plan, Query
from analyses.spec import Confidence, Spec
from analyses.survival import kaplan_meier
from analyses.survival.follow_up import FollowUp

MANIFEST = kaplan_meier.MANIFEST


class RmstSpec(Spec, FollowUp, Confidence):
    """Mean survival time restricted to `tau`, per level of `group` (if any), and first − second group."""

    type: Literal["rmst"]
    tau: float = Field(gt=0, description="the horizon, in the duration's unit")
    group: str | None = None
    groups: list[str | float] | None = Field(None, min_length=2, max_length=2)

    def columns(self) -> list[str]:
        return [self.duration, self.event, *([self.group] if self.group else [])]

    def grouping(self) -> list[str]:
        return [self.group] if self.group else []

    def curves(self) -> kaplan_meier.KaplanMeierSpec:
        """The Kaplan–Meier analysis whose curves it integrates."""
        fields = self.model_dump(exclude={"type", "tau", "groups"})
        return kaplan_meier.KaplanMeierSpec.model_validate({**fields, "type": "kaplan_meier"})


def plan(spec: RmstSpec, declared: discovery.Declared) -> Plan:
    km = yield from kaplan_meier.plan(spec.curves(), declared)
    z = distributions.norm_ppf(1 - spec.alpha / 2)
    groups = {name: _restricted(curve, spec.tau, z) for name, curve in km["groups"].items()}
    result: dict[str, Any] = {"type": "rmst", "n": km["n"], "n_dropped": km["n_dropped"], "events": km["events"],
                              "group": spec.group, "tau": spec.tau, "time_resolution": km["time_resolution"],
                              "groups": groups}  # fmt: skip
    compared = _compared(spec, list(groups))
    if compared:
        first, second = (groups[name] for name in compared)
        difference = first["rmst"] - second["rmst"]
        se = math.hypot(first["se"], second["se"])
        result["difference"] = {"groups": compared, "estimate": difference, "se": se,
                                "ci_lower": difference - z * se, "ci_upper": difference + z * se,
                                "z": difference / se, "p": float(2 * distributions.norm_sf(abs(difference / se)))}  # fmt: skip
    return result


def _compared(spec: RmstSpec, labels: list[str]) -> list[str] | None:
    if spec.groups is not None:
        wanted = [col.label(g) for g in spec.groups]
        missing = [g for g in wanted if g not in labels]
        if missing:
            raise AnalysisError(f"group level {missing[0]!r} of '{spec.group}' not found (levels: {', '.join(labels)})")
        return wanted
    return labels if len(labels) == 2 else None


def _restricted(curve: dict[str, Any], tau: float, z: float) -> dict[str, float]:
    """RMST up to τ of one Kaplan–Meier curve, its standard error and confidence interval."""
    time, survival = np.asarray(curve["time"]), np.asarray(curve["survival"])
    n, d = np.asarray(curve["at_risk"], dtype=float), np.asarray(curve["events"], dtype=float)
    if tau > time[-1]:
        raise AnalysisError(f"tau = {tau:g} is beyond the group's last follow-up time ({time[-1]:g}): the survival "
                            "curve is not estimated there; choose a smaller tau")  # fmt: skip
    inside = time < tau
    edges = np.append(time[inside], tau)
    pieces = survival[inside] * np.diff(edges)  # S is constant on [tᵢ, tᵢ₊₁)
    rmst = float(pieces.sum())
    after = np.cumsum(pieces[::-1])[::-1]  # Aᵢ = ∫ from tᵢ to τ of S
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = d[inside] / (n[inside] * (n[inside] - d[inside]))
        terms = np.where((d[inside] > 0) & (n[inside] > d[inside]), after**2 * ratio, 0.0)
    se = float(math.sqrt(terms.sum()))
    return {"rmst": rmst, "se": se, "ci_lower": rmst - z * se, "ci_upper": rmst + z * se}


def local(spec: RmstSpec, rows: pd.DataFrame, query: Query) -> Contribution:
    return kaplan_meier.local(spec.curves(), rows, query)
