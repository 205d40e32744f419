"""A Flower Grid whose `send_and_receive` checks for replies every few milliseconds.

Flower's own waits between pulls are fixed: 0.1 s on the simulation engine, 3 s on the
deployment engine, so every round costs at least that much. This wrapper uses the Grid's public
`push_messages` and `pull_messages` with a pull interval that starts at 5 ms (again after each
pull that brought replies) and backs off to 0.1 s while none come; every other call goes to the
wrapped Grid.

On the deployment engine a reply can be listed before all its objects reached the SuperLink, and
Flower's Grid then asks for them again after 1 s, 2 s, 4 s …; `quick_object_pulls` (Flower
internals, for the version the workbench is tested with) makes that 10 ms, capped at 0.2 s.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from workbench.messages import FLOWER_TESTED


class QuickGrid:
    """Delegates to `grid`; only `send_and_receive` differs."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Push `messages`, then pull until every reply arrived or `timeout` seconds passed."""
        pending = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        interval = 0.005
        while pending and (deadline is None or time.monotonic() < deadline):
            arrived = list(self._grid.pull_messages(pending))
            replies += arrived
            pending -= {message.metadata.reply_to_message_id for message in arrived}
            interval = 0.005 if arrived else min(0.1, interval * 1.3)
            if pending:
                time.sleep(interval)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def quick_object_pulls() -> str:
    """Retry a reply's missing objects after 10 ms (capped at 0.2 s); "" or why not (another Flower version)."""
    import flwr
    from flwr.superlink.grid import http_grid

    if flwr.__version__ != FLOWER_TESTED:
        return f"Flower {flwr.__version__} is installed; quick object pulls are tested with {FLOWER_TESTED}"
    pulls = getattr(http_grid, "pull_objects", None)
    if not callable(pulls):
        return "Flower's deployment Grid no longer pulls objects where expected"
    if not isinstance(pulls, functools.partial):
        http_grid.pull_objects = functools.partial(pulls, initial_backoff=0.01, backoff_cap=0.2)  # type: ignore[attr-defined]
    return ""
