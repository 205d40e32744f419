"""The coordinator as a Flower ServerApp: runs a protocol's analyses over the connected nodes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from analyses import driver, registry
from workbench.errors import UserError
from workbench.federation import Attempt, FlowerExchange, wait_for_nodes
from workbench.messages import Reply
from workbench.protocol import Protocol
from workbench.quick_grid import QuickGrid

if TYPE_CHECKING:
    from workbench import training
    from workbench.training import TrainingRun


@dataclass
class StudyRun:
    """What a finished study produced: per-analysis results, the sites' last replies, refusals, rounds, time."""

    analyses: dict[str, dict[str, Any]] = field(default_factory=dict)
    sites: dict[str, Reply] = field(default_factory=dict)
    refusals: list[dict[str, str]] = field(default_factory=list)
    aggregation: dict[str, Any] = field(default_factory=dict)
    transcript: list[Attempt] = field(default_factory=list)
    training: dict[str, TrainingRun] = field(default_factory=dict)
    rounds: int = 0
    seconds: float = 0.0


def run_study(
    grid: Grid,
    protocol: Protocol,
    sites: int,
    progress: driver.Progress | None = None,
    training_progress: training.Progress | None = None,
    timeout: float = 600.0,
    requester: str = "",
) -> StudyRun:
    """Run `protocol` once `sites` nodes are connected: the statistics (sharing rounds), then each training.

    `requester`: the authenticated researcher, named to every node (its audit log records it).
    """
    grid = QuickGrid(grid)  # type: ignore[assignment]
    run = StudyRun()
    nodes = wait_for_nodes(grid, sites, timeout)
    started = time.perf_counter()
    exchange = FlowerExchange(grid, nodes, protocol, timeout, requester)
    plans = {analysis_id: registry.plan(spec, protocol.levels) for analysis_id, spec in protocol.analyses.items()}
    run.analyses = driver.run(plans, exchange, progress)
    run.sites, run.refusals = exchange.replies, exchange.refusals
    run.aggregation, run.transcript = exchange.summary(), exchange.transcript
    run.rounds = exchange.rounds
    if protocol.model.training:
        from workbench import training  # torch, MONAI and Opacus load only for studies that train
    for spec in protocol.model.training:
        scaling = run.analyses.get(spec.scaling_id)
        run.training[spec.id] = training.run(
            grid, len(nodes), protocol, spec, scaling, training_progress, timeout, requester
        )
    run.seconds = time.perf_counter() - started
    return run


def check_study(
    grid: Grid, protocol: Protocol, sites: int, timeout: float = 600.0, requester: str = ""
) -> dict[str, Any]:
    """A dry run once `sites` nodes are connected: every site's verdict per analysis, nothing released."""
    grid = QuickGrid(grid)  # type: ignore[assignment]
    exchange = FlowerExchange(grid, wait_for_nodes(grid, sites, timeout), protocol, timeout, requester)
    verdicts = exchange.check()
    notes = {site: reply.notes for site, reply in exchange.replies.items() if reply.notes}
    return {"mode": exchange.mode, "sites": verdicts, "limits": exchange.limits().__dict__, "notes": notes}


def make_server_app(
    protocol: Protocol,
    sites: int,
    outcome: list[Any],
    progress: driver.Progress | None = None,
    training_progress: training.Progress | None = None,
    check: bool = False,
    then: Callable[[StudyRun], Any] | None = None,
    fail: Callable[[UserError], Any] | None = None,
) -> ServerApp:
    """A ServerApp for the embedded simulation: runs `protocol` (or only its dry run) and appends the outcome
    (the StudyRun, or what `then` returns for it); a study that stops on a user error goes to `fail` when given
    (e.g. to end the command at once), else it is raised."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            if check:
                outcome.append(check_study(grid, protocol, sites))
            else:
                run = run_study(grid, protocol, sites, progress, training_progress)
                outcome.append(then(run) if then else run)
        except UserError as error:
            if fail is None:
                raise
            fail(error)

    return app
