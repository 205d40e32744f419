"""Run a study on Flower's embedded simulation engine: one simulated node per site folder."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import UserError

if TYPE_CHECKING:
    from analyses.driver import Progress
    from workbench import training
    from workbench.protocol import Protocol
    from workbench.server_app import StudyRun


def simulate(
    protocol: Protocol,
    site_folders: Sequence[str | Path],
    progress: Progress | None = None,
    training_progress: training.Progress | None = None,
    check: bool = False,
    then: Callable[[StudyRun], Any] | None = None,
    fail: Callable[[UserError], Any] | None = None,
) -> Any:
    """Run `protocol` with one node per site folder (or, with `check`, only its dry run: the verdicts);
    raises StudyError if a site refuses or fails.

    Returns the StudyRun, or what `then` (e.g. writing the results) returns for it: `then` runs as soon
    as the study ends, while Flower and Ray stop; a site's error goes to `fail` (e.g. ending the command at
    once) when given, else it is raised once Flower has stopped.
    """
    folders = check_folders(site_folders)
    outcome: list[Any] = []
    with _quiet():
        loading = _Importing(*PRELOAD)
        with _ray():  # while Ray starts (mostly waiting for its processes), Flower and the apps load
            loading.join()
            logging.getLogger("flwr").setLevel(logging.ERROR)  # importing Flower set its own level
            from flwr.simulation import run_simulation

            from hospital_node.client_app import make_client_app
            from workbench.quick_grid import quick_pickup
            from workbench.server_app import make_server_app

            problem = quick_pickup()
            if problem:
                print(f"simulation: {problem}; each round waits for Flower's own pickup", file=sys.stderr)

            server = make_server_app(protocol, len(folders), outcome, progress, training_progress, check, then, fail)
            run_simulation(
                server_app=server,
                client_app=make_client_app(folders),
                num_supernodes=len(folders),
                backend_config={"client_resources": {"num_cpus": 1}},  # Flower uses the Ray started above
            )
    return outcome[0]


def check_folders(site_folders: Sequence[str | Path]) -> list[str]:
    """The site folders as absolute paths; UserError if none, one is missing, or one is given twice."""
    folders = [str(Path(folder).resolve()) for folder in site_folders]
    if not folders:
        raise UserError("no site folders given; pass --site DIR for each hospital")
    for folder in folders:
        if not Path(folder).is_dir():
            raise UserError(f"{folder}: site folder not found")
    if len(set(folders)) != len(folders):
        raise UserError("the same site folder is given twice")
    return folders


class _Importing(threading.Thread):
    """Imports modules in the background, running `then` once the first is loaded; `join` re-raises what
    they raised, except a UserError of `then`, which goes to `fail` at once when one is given."""

    def __init__(
        self, *modules: str, then: Callable[[], object] | None = None, fail: Callable[[UserError], object] | None = None
    ) -> None:
        super().__init__(name="importing", daemon=True)
        self.modules, self.then, self.fail = modules, then, fail
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            for number, module in enumerate(self.modules):
                importlib.import_module(module)
                if number == 0 and self.then is not None:
                    self.then()
        except UserError as error:
            if self.fail is None:
                self.error = error
            else:
                self.fail(error)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            self.error = error

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


RAY: dict[str, Any] = {
    "logging_level": logging.ERROR,
    "log_to_driver": False,
    "include_dashboard": False,
    "_system_config": {"max_direct_call_object_size": 4 * 2**20},  # replies pass directly, not via the store
}
"""How the simulation starts Ray."""


PRELOAD = ("workbench.protocol", "flwr.simulation", "hospital_node.client_app", "workbench.server_app")
"""What a simulated study needs beyond Ray: loaded while Ray starts."""


def start_early(check: Callable[[], object], fail: Callable[[UserError], object]) -> None:
    """Start Ray now, loading the protocol's code, Flower and the apps meanwhile, then `check` (e.g. reading
    the protocol); a UserError of `check` goes to `fail` at once, while Ray may still be starting. A command
    that will run a study calls this first; `simulate` then uses this Ray."""
    with _quiet():
        loading = _Importing(*PRELOAD, then=check, fail=fail)
        _start_ray()
        loading.join()


@contextlib.contextmanager
def _ray() -> Iterator[None]:
    """Ray for the simulation, started here unless it runs already; shut down afterwards (Flower uses a
    Ray that is already running, and shuts it down)."""
    import ray

    _start_ray()
    try:
        yield
    finally:
        if ray.is_initialized():
            ray.shutdown()


def _start_ray() -> None:
    """Start Ray unless it runs. Flower would start it with a runtime environment that only sets PYTHONPATH;
    without one, Ray starts ~1 s sooner and its node actors start faster. Ray's processes inherit PYTHONPATH
    from this process instead (set while Ray starts, then restored)."""
    import ray

    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([*sys.path, *filter(None, [before])])
    try:
        if not ray.is_initialized():
            ray.init(**RAY)
    finally:  # Ray's processes have their copy of the environment
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


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
