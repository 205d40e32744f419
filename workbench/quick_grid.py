"""A Flower Grid whose `send_and_receive` checks for replies every few milliseconds.

Flower's own waits between pulls are fixed: 0.1 s on the simulation engine, 3 s on the
deployment engine, so every round costs at least that much. This wrapper uses the Grid's public
`push_messages` and `pull_messages` with a pull interval that starts at 5 ms (again after each
pull that brought replies) and backs off to 0.1 s while none come; every other call goes to the
wrapped Grid.

On the deployment engine a reply can be listed before all its objects reached the SuperLink, and
Flower's Grid then asks for them again after 1 s, 2 s, 4 s … for up to two hours; `quick_object_pulls`
(Flower internals, for the version the workbench is tested with) makes that 10 ms, capped at 0.2 s, for
at most `OBJECT_WAIT` seconds: a node stopped while uploading its reply never completes it, and waiting
for it held up the other sites' replies past the round's timeout.

On the simulation engine, Flower hands pushed messages to its node workers in a loop that asks
the message store, node by node, for each node's next message (every ask walks the whole store:
quadratic in the number of sites) and then waits 0.1 s. `quick_pickup` (Flower internals, same
version) makes a pass walk the store once, ask only for the nodes with a message waiting, and wait
5 ms.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flwr.app import Message
from flwr.serverapp import Grid

if TYPE_CHECKING:
    from queue import Queue

from workbench.messages import FLOWER_TESTED


class QuickGrid:
    """Delegates to `grid`; only `send_and_receive` differs."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Push `messages`, then pull until every reply arrived or `timeout` seconds passed."""
        # A message the SuperLink would not store (its node left, e.g. stopped) has no id and never a reply;
        # asking for it would make every pull fail (Flower 1.42 looks each asked id up in its store).
        pending = {message_id for message_id in self._grid.push_messages(messages) if message_id}
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        interval = 0.005
        while pending:  # the last pull starts after the deadline: a slow pull must not cost replies already there
            late = deadline is not None and time.monotonic() >= deadline
            arrived = list(self._grid.pull_messages(pending))
            replies += arrived
            pending -= {message.metadata.reply_to_message_id for message in arrived}
            if not pending or late:
                break
            interval = 0.005 if arrived else min(0.1, interval * 1.3)
            time.sleep(interval)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


OBJECT_WAIT = 10.0
"""Seconds a listed reply's objects may take to arrive before Flower's Grid reports the reply unavailable."""


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
        http_grid.pull_objects = functools.partial(  # type: ignore[attr-defined]
            pulls, initial_backoff=0.01, backoff_cap=0.2, max_time=OBJECT_WAIT
        )
    return ""


PICKUP_INTERVAL = 0.005
"""Seconds between passes over the simulation's message store."""


def quick_pickup() -> str:
    """Hand the simulation's messages to its node workers quickly; "" or why not (another Flower version)."""
    import flwr
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    if flwr.__version__ != FLOWER_TESTED:
        return f"Flower {flwr.__version__} is installed; quick message pickup is tested with {FLOWER_TESTED}"
    if not callable(getattr(vce_api, "add_messages_to_queue", None)) or not callable(
        getattr(InMemoryLinkState, "get_message_ins", None)
    ):
        return "Flower's simulation no longer hands out messages where expected"
    vce_api.add_messages_to_queue = _pick_up
    return ""


def _pick_up(state: Any, queue: Queue[Message], nodes_mapping: dict[int, int], f_stop: threading.Event) -> None:
    """Flower's `add_messages_to_queue`, with one walk of the store per pass and a 5 ms wait."""
    while not f_stop.is_set():
        for node_id in _waiting(state, nodes_mapping.keys()):
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
        f_stop.wait(PICKUP_INTERVAL)


def _waiting(state: Any, nodes: Iterable[int]) -> Iterable[int]:
    """The nodes with a message not yet handed out (all `nodes` if the store is not Flower's in-memory one)."""
    store, lock = getattr(state, "message_ins_store", None), getattr(state, "lock", None)
    if not isinstance(store, dict) or lock is None:
        return nodes
    with lock:
        return {m.metadata.dst_node_id for m in store.values() if not m.metadata.delivered_at} & set(nodes)
