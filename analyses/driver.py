"""Run many analyses together: independent analyses share rounds.

Each round, every analysis still running contributes its next query; one
exchange carries them all to every site and returns the combined totals.
A study then costs about as many rounds as its longest analysis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from analyses import columns as col
from analyses import registry
from analyses.columns import Level
from analyses.contract import AnalysisError, Contribution, Plan, Query, Refusal, reduce_queries
from analyses.disclosure import Limits, release
from analyses.discovery import Declared
from analyses.spec import Spec

Exchange = Callable[[dict[str, Query]], dict[str, Contribution | AnalysisError]]
"""Send one round of queries (analysis id → query) to all sites; return totals (or why none) per analysis."""

Progress = Callable[[int, dict[str, Query]], None]


def run(plans: Mapping[str, Plan], exchange: Exchange, progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Drive all plans to completion; an analysis that fails gets `{"error": ...}` as its result."""
    results: dict[str, dict[str, Any]] = {}
    pending: dict[str, Query] = {}
    for analysis_id, plan in plans.items():
        _advance(analysis_id, plan, None, pending, results)
    round_number = 0
    while pending:
        round_number += 1
        if progress:
            progress(round_number, dict(pending))
        totals = exchange(dict(pending))
        for analysis_id in list(pending):
            del pending[analysis_id]
            _advance(analysis_id, plans[analysis_id], totals[analysis_id], pending, results)
    return {analysis_id: results[analysis_id] for analysis_id in plans}


def _advance(
    analysis_id: str,
    plan: Plan,
    total: Contribution | AnalysisError | None,
    pending: dict[str, Query],
    results: dict[str, dict[str, Any]],
) -> None:
    try:
        if total is None:
            pending[analysis_id] = next(plan)
        elif isinstance(total, AnalysisError):
            pending[analysis_id] = plan.throw(total)
        else:
            pending[analysis_id] = plan.send(total)
    except StopIteration as done:
        results[analysis_id] = done.value
    except Refusal as refusal:
        results[analysis_id] = {"error": str(refusal), "refused_by": refusal.sites}
    except AnalysisError as error:
        results[analysis_id] = {"error": str(error)}


def in_memory(
    frames: Mapping[str, pd.DataFrame],
    specs: Mapping[str, Spec],
    limits: Limits = Limits(),
    masked: bool = False,
    population: Mapping[str, Sequence[str]] | None = None,
) -> Exchange:
    """An exchange over site DataFrames held in this process (for notebooks, tests, benchmarks and dry runs).

    Each site's reply passes the same disclosure release as on a node, with `limits` (`masked`: as a
    node under secure aggregation, where the site's own share is not held to the minimums).
    `population` gives per analysis the columns a row needs a value in (default: its own).
    """

    def answer(analysis_id: str, frame: pd.DataFrame, query: Query) -> Contribution:
        spec = specs[analysis_id]
        rows = col.complete_cases(frame, population[analysis_id] if population else spec.drops())
        contribution = registry.local(spec, rows, query, len(frame) - len(rows))
        return release(contribution, registry.manifest(spec), query.phase, limits, masked)

    def exchange(queries: dict[str, Query]) -> dict[str, Contribution | AnalysisError]:
        replies = [
            (site, {analysis_id: answer(analysis_id, frame, q) for analysis_id, q in queries.items()})
            for site, frame in frames.items()
        ]
        return reduce_queries(replies, queries)

    return exchange


def observed_levels(frames: Mapping[str, pd.DataFrame], specs: Mapping[str, Spec]) -> dict[str, list[Level]]:
    """Every value the analyses' grouping and text columns hold across `frames` (trusted, in-process data only;
    a federation takes them from the protocol's `[variables]`). A column numeric in some frames and text in
    others is left out, so its sites report it."""
    grouping = {name for spec in specs.values() for name in spec.grouping()}
    found: dict[str, dict[str, set[Level]]] = {}
    for frame in frames.values():
        for name in {name for spec in specs.values() for name in spec.columns()} & set(frame.columns):
            kind = col.kind(frame, name)
            if name in grouping or kind == col.CATEGORICAL:
                found.setdefault(name, {}).setdefault(kind, set()).update(col.present(frame, name))
    return {name: sorted(next(iter(kinds.values()))) for name, kinds in sorted(found.items()) if len(kinds) == 1}


def run_in_memory(
    specs: Mapping[str, Spec], frames: Mapping[str, pd.DataFrame], declared: Declared | None = None
) -> dict[str, dict[str, Any]]:
    """Run analyses over site DataFrames in this process, exactly as a federation would under secure aggregation
    (its default) with minimum counts of 1.

    `declared` holds the values of grouping and text columns (default: those the frames hold).
    """
    levels = observed_levels(frames, specs) if declared is None else declared
    plans = {analysis_id: registry.plan(spec, levels) for analysis_id, spec in specs.items()}
    return run(plans, in_memory(frames, specs, masked=True))
