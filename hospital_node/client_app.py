"""The hospital node as a Flower ClientApp.

In a deployment the SuperNode's node config names the site folder (`site="/data/site"`);
in the embedded simulation each simulated node's partition id picks one of the
site folders the launcher was given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from hospital_node.exclusive import site_lock
from hospital_node.gate import log_refusal
from hospital_node.handler import answer
from hospital_node.site import SiteError, open_site
from workbench.messages import Request


def make_client_app(site_folders: Sequence[str] = ()) -> ClientApp:
    """A ClientApp bound to `site_folders` (simulation) or to the node config's `site` (deployment)."""
    app = ClientApp()
    folders = list(site_folders)

    def folder(context: Context) -> str:
        config = context.node_config
        return str(config["site"]) if "site" in config else folders[int(config["partition-id"])]

    @app.query()
    def query(message: Message, context: Context) -> Message:
        keys = ContextKeys(context.state)
        with site_lock(folder(context)):
            reply = answer(folder(context), Request.from_records(message.content), _requester(message), keys)
        return Message(reply.to_records(), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        from hospital_node import train_handler  # torch, MONAI and Opacus load only for training rounds

        return _training(message, folder(context), train_handler.train)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        from hospital_node import train_handler

        return _training(message, folder(context), train_handler.evaluate)

    return app


REFUSED = 4100
"""Flower error code of a training or evaluation round a site refuses (the reason says why)."""


def _training(message: Message, folder: str, work: Callable[[str, RecordDict, str], RecordDict]) -> Message:
    """Run a training or evaluation round; a refusal goes back as a Flower error with its reason."""
    from hospital_node.train_handler import Refusals

    with site_lock(folder):  # the budget check, the training and the ledger entry: one at a time per site
        try:
            return Message(work(folder, message.content, _requester(message)), reply_to=message)
        except Refusals as refusal:
            config = message.content.config_records["config"]
            log_refusal(folder, str(config["sha256"]), str(config["protocol"]), int(config["server-round"]),
                        str(refusal), analysis=str(config["training"]))  # fmt: skip
            return Message(error=Error(code=REFUSED, reason=f"site {_site_id(folder)}: {refusal}"), reply_to=message)


def _requester(message: Message) -> str:
    """Who asked: the researcher the coordinator authenticated (deployment), and the Flower run."""
    run = f"Flower run {message.metadata.run_id}"
    records = message.content.config_records
    record = records.get("study") or records.get("config")
    name = str(record.get("requested_by", "")) if record is not None else ""
    return f"{name} ({run})" if name else run


def _site_id(folder: str) -> str:
    try:
        return open_site(folder).id
    except SiteError:
        return Path(folder).name


class ContextKeys:
    """Secure-aggregation private keys (one per study) in the node's Flower context state: they never leave it."""

    RECORD = "secure-aggregation-keys"

    def __init__(self, state: RecordDict) -> None:
        if self.RECORD not in state:
            state[self.RECORD] = ConfigRecord()
        self.record = state[self.RECORD]

    def put(self, name: str, value: bytes) -> None:
        self.record[name] = value

    def get(self, name: str) -> bytes | None:
        value = self.record.get(name)
        return bytes(value) if value is not None else None


app = make_client_app()
"""For `flwr run` and SuperNodes in a deployment."""
