"""The hospital node as a Flower ClientApp.

In a deployment the SuperNode's node config names the site folder (`site="/data/site"`);
in the embedded simulation each simulated node's partition id picks one of the
site folders the launcher was given.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Context, Message
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
        reply = answer(folder, Request.from_records(message.content), f"Flower run {message.metadata.run_id}")
        return Message(reply.to_records(), reply_to=message)

    return app


app = make_client_app()
"""For `flwr run` and SuperNodes in a deployment."""
