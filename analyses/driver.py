"""Run many analyses together: independent analyses share rounds.

Each round, every analysis still running contributes its next query; one
exchange carries them all to every site and returns the combined totals.
A study then costs about as many rounds as its longest analysis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from analyses import registry
from analyses.contract import AnalysisError, Contribution, Plan, Query, Refusal, reduce_queries
from analyses.disclosure import Limits, release
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


def in_memory(frames: Mapping[str, pd.DataFrame], specs: Mapping[str, Spec], limits: Limits = Limits()) -> Exchange:
    """An exchange over site DataFrames held in this process (for notebooks, tests and benchmarks).

    Each site's reply passes the same disclosure release as on a node, with `limits`.
    """

    def answer(analysis_id: str, frame: pd.DataFrame, query: Query) -> Contribution:
        spec = specs[analysis_id]
        return release(registry.local(spec, frame, query), registry.manifest(spec), query.phase, limits)

    def exchange(queries: dict[str, Query]) -> dict[str, Contribution | AnalysisError]:
        replies = [
            (site, {analysis_id: answer(analysis_id, frame, q) for analysis_id, q in queries.items()})
            for site, frame in frames.items()
        ]
        return reduce_queries(replies, queries)

    return exchange


def run_in_memory(specs: Mapping[str, Spec], frames: Mapping[str, pd.DataFrame]) -> dict[str, dict[str, Any]]:
    """Run analyses over site DataFrames in this process, exactly as a federation would."""
    return run({analysis_id: registry.plan(spec) for analysis_id, spec in specs.items()}, in_memory(frames, specs))
