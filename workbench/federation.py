"""One study round over Flower: send every node the pending queries, combine the replies."""

from __future__ import annotations

import time
from collections.abc import Sequence

from flwr.app import Message
from flwr.serverapp import Grid

from analyses.contract import AnalysisError, Contribution, Query, reduce_queries
from workbench.errors import StudyError
from workbench.messages import MESSAGE_TYPE, Reply, Request
from workbench.protocol import Protocol


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    """The ids of `count` connected nodes, or a StudyError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes[:count]
        if time.monotonic() > deadline:
            raise StudyError(f"only {len(nodes)} of {count} sites connected within {timeout:g} s")
        time.sleep(0.05)


class FlowerExchange:
    """An `analyses.driver.Exchange` over a Flower Grid; remembers which sites answered."""

    def __init__(self, grid: Grid, nodes: Sequence[int], protocol: Protocol, timeout: float) -> None:
        self.grid, self.nodes, self.protocol, self.timeout = grid, list(nodes), protocol, timeout
        self.rounds = 0
        self.sites: dict[str, int] = {}
        """Site id → rows in its cohort table."""

    def __call__(self, queries: dict[str, Query]) -> dict[str, Contribution | AnalysisError]:
        self.rounds += 1
        request = Request(self.protocol.text, self.protocol.sha256, self.rounds, queries)
        messages = [
            Message(request.to_records(), dst_node_id=node, message_type=MESSAGE_TYPE, group_id=str(self.rounds))
            for node in self.nodes
        ]
        replies = self._collect(list(self.grid.send_and_receive(messages, timeout=self.timeout)))
        self.sites = {reply.site: reply.rows for reply in sorted(replies, key=lambda r: r.site)}
        return reduce_queries(((reply.site, reply.contributions) for reply in replies), queries)

    def _collect(self, messages: list[Message]) -> list[Reply]:
        """Decoded replies; any failed or refusing site stops the study with every site's reason."""
        reasons: dict[str, list[str]] = {}  # reason → sites giving it
        replies = []
        for message in messages:
            if message.has_error():
                reasons.setdefault(f"failed: {message.error.reason}", []).append(f"node {message.metadata.src_node_id}")
                continue
            reply = Reply.from_records(message.content)
            if reply.error:
                reasons.setdefault(reply.error, []).append(reply.site)
            replies.append(reply)
        problems = [f"site {', '.join(sorted(sites))}: {reason}" for reason, sites in reasons.items()]
        if len(messages) < len(self.nodes):
            problems.append(f"{len(self.nodes) - len(messages)} site(s) did not answer within {self.timeout:g} s")
        ids = [reply.site for reply in replies]
        duplicates = sorted({site for site in ids if ids.count(site) > 1})
        if duplicates:
            problems.append(f"two nodes report the same site id '{duplicates[0]}'; give each site its own [site] id")
        if problems:
            raise StudyError("; ".join(sorted(problems)))
        return replies
