"""The quick deployment runtime relies on Flower internals: these tests fail if Flower changes under it."""

from __future__ import annotations

import io
import zipfile
from types import SimpleNamespace

import flwr

from hospital_node import supernode
from workbench import quick_grid
from workbench.messages import FLOWER_TESTED


def test_the_installed_flower_is_the_tested_one_and_has_every_internal_the_quick_runtime_uses():
    assert flwr.__version__ == FLOWER_TESTED
    assert supernode.problems() == ""
    assert quick_grid.quick_object_pulls() == ""
    assert quick_grid.quick_object_pulls() == ""  # applying it twice changes nothing
    assert quick_grid.quick_pickup() == ""


def test_the_quick_pickup_reads_the_simulations_message_store():
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation import NoOpFederationManager

    state = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()).state()
    assert quick_grid._waiting(state, [1, 2]) == set()  # an empty store, read directly (not every node asked)
    assert quick_grid._waiting(object(), [1, 2]) == [1, 2]  # another store: every node is asked, as Flower does


def test_another_flower_version_falls_back_to_stock_flower(monkeypatch):
    monkeypatch.setattr(flwr, "__version__", "1.99.0")
    assert supernode.problems() == f"Flower 1.99.0 is installed; the quick node runtime is tested with {FLOWER_TESTED}"
    assert quick_grid.quick_object_pulls().startswith("Flower 1.99.0 is installed")
    assert quick_grid.quick_pickup().startswith("Flower 1.99.0 is installed")


def _bundle(clientapp: str) -> bytes:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr("pyproject.toml", (
            '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
            '[project]\nname = "study"\nversion = "1.0.0"\n'
            '[tool.flwr.app]\npublisher = "someone"\n'
            f'[tool.flwr.app.components]\nserverapp = "x:app"\nclientapp = "{clientapp}"\n'
        ))  # fmt: skip
    return stream.getvalue()


def test_a_node_runs_only_the_workbenchs_clientapp():
    assert supernode.foreign_app(_bundle(supernode.CLIENT_APP)) == ""
    assert supernode.foreign_app(_bundle("evil:app")) == (
        "this hospital node runs only the workbench's ClientApp, not 'evil:app'"
    )


def test_the_quick_grid_pulls_until_every_reply_arrived():
    class Slow:
        """A Grid whose replies arrive one pull at a time."""

        def __init__(self) -> None:
            self.pulls = 0

        def push_messages(self, messages):
            return [f"m{k}" for k, _ in enumerate(messages)]

        def pull_messages(self, ids):
            self.pulls += 1
            first = sorted(ids)[0]
            return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=first))]

    grid = quick_grid.QuickGrid(Slow())  # type: ignore[arg-type]
    replies = grid.send_and_receive([object(), object(), object()], timeout=5)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0", "m1", "m2"] and grid.pulls == 3


def test_the_quick_grid_does_not_wait_for_a_message_the_superlink_would_not_store():
    class NodeLeft:
        """A Grid that could not store the message to a node that just left (Flower returns no id for it)."""

        def push_messages(self, messages):
            return ["m0", "", "m2"]

        def pull_messages(self, ids):
            assert "" not in ids  # Flower 1.42 fails the whole pull for an id it does not hold
            return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in sorted(ids)]

    replies = quick_grid.QuickGrid(NodeLeft()).send_and_receive([object(), object(), object()], timeout=60)  # type: ignore[arg-type]
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0", "m2"]


class SlowGrid:
    """Two pushed messages; the first pull blocks past the round's timeout (a stopped node's reply objects), the
    replies of the others are there by then."""

    def __init__(self) -> None:
        self.pulls = 0

    def push_messages(self, messages):
        return ["a", "b"]

    def pull_messages(self, ids):
        self.pulls += 1
        if self.pulls == 1:
            import time

            time.sleep(0.3)
            return []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in sorted(ids)]


def test_a_pull_that_outlasts_the_timeout_still_collects_the_replies_already_there():
    from flwr.superlink.grid import http_grid

    replies = quick_grid.QuickGrid(SlowGrid()).send_and_receive([], timeout=0.1)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a", "b"]
    assert quick_grid.quick_object_pulls() == ""
    assert http_grid.pull_objects.keywords["max_time"] == quick_grid.OBJECT_WAIT  # a stopped node's upload ends
