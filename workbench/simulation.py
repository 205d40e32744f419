"""Run a study on Flower's embedded simulation engine: one simulated node per site folder."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.simulation import run_simulation

from analyses.driver import Progress
from hospital_node.client_app import make_client_app
from workbench.errors import UserError
from workbench.protocol import Protocol
from workbench.server_app import StudyRun, make_server_app

if TYPE_CHECKING:
    from workbench import training


def simulate(
    protocol: Protocol,
    site_folders: Sequence[str | Path],
    progress: Progress | None = None,
    training_progress: training.Progress | None = None,
    check: bool = False,
) -> StudyRun | dict[str, Any]:
    """Run `protocol` with one node per site folder (or, with `check`, only its dry run: the verdicts);
    raises StudyError if a site refuses or fails."""
    folders = [str(Path(folder).resolve()) for folder in site_folders]
    if not folders:
        raise UserError("no site folders given; pass --site DIR for each hospital")
    for folder in folders:
        if not Path(folder).is_dir():
            raise UserError(f"{folder}: site folder not found")
    if len(set(folders)) != len(folders):
        raise UserError("the same site folder is given twice")
    outcome: list[Any] = []
    server = make_server_app(protocol, len(folders), outcome, progress, training_progress, check)
    with _quiet():
        run_simulation(
            server_app=server,
            client_app=make_client_app(folders),
            num_supernodes=len(folders),
            backend_config={
                "client_resources": {"num_cpus": 1},
                "init_args": {
                    "logging_level": logging.ERROR,
                    "log_to_driver": False,
                    "_system_config": {"max_direct_call_object_size": 4 * 2**20},
                },
            },
        )
    return outcome[0]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep Flower's and Ray's start-up chatter off the researcher's terminal."""
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        flwr_logger.setLevel(level)
