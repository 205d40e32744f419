"""The hospital node as a Flower ClientApp.

In a deployment the SuperNode's node config names the site folder (`site="/data/site"`);
in the embedded simulation each simulated node's partition id picks one of the
site folders the launcher was given.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from hospital_node.handler import answer
from workbench.messages import Request


def make_client_app(site_folders: Sequence[str] = ()) -> ClientApp:
    """A ClientApp bound to `site_folders` (simulation) or to the node config's `site` (deployment)."""
    app = ClientApp()
    folders = list(site_folders)

    @app.query()
    def query(message: Message, context: Context) -> Message:
        config = context.node_config
        folder = str(config["site"]) if "site" in config else folders[int(config["partition-id"])]
        keys = ContextKeys(context.state)
        reply = answer(folder, Request.from_records(message.content), f"Flower run {message.metadata.run_id}", keys)
        return Message(reply.to_records(), reply_to=message)

    return app


class ContextKeys:
    """Secure-aggregation private keys in the node's Flower context state: they never leave the node."""

    RECORD = "secure-aggregation-keys"

    def __init__(self, state: RecordDict) -> None:
        if self.RECORD not in state:
            state[self.RECORD] = ConfigRecord()
        self.record = state[self.RECORD]

    def put(self, public: bytes, private: bytes) -> None:
        self.record[public.hex()] = private

    def take(self, public: bytes) -> bytes | None:
        private = self.record.pop(public.hex(), None)
        return bytes(private) if private is not None else None


app = make_client_app()
"""For `flwr run` and SuperNodes in a deployment."""
