"""One study round over Flower: send every node the pending queries, combine the replies."""

from __future__ import annotations

import time
from collections.abc import Sequence

from flwr.app import Message
from flwr.serverapp import Grid

from analyses.contract import AnalysisError, Contribution, Query, Refusal, reduce_queries
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


class SiteExchange:
    """An `analyses.driver.Exchange` over per-site replies; remembers the sites' replies and refusals.

    A site that answers nothing (error, refusal of the protocol, no reply) stops the study
    with every such site's reason; a site that refuses one analysis fails only that analysis.
    """

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.rounds = 0
        self.replies: dict[str, Reply] = {}
        """Each site's latest reply (rows, usage, audit head)."""
        self.refusals: list[dict[str, str]] = []
        """Every refusal of an analysis by a site: site, analysis, reason."""

    def send(self, request: Request) -> tuple[list[Reply], list[str]]:
        """Deliver `request` to every site: the replies, and problems of delivery."""
        raise NotImplementedError

    def __call__(self, queries: dict[str, Query]) -> dict[str, Contribution | AnalysisError]:
        self.rounds += 1
        replies, problems = self.send(Request(self.protocol.text, self.protocol.sha256, self.rounds, queries))
        _check(replies, problems)
        self.replies = {reply.site: reply for reply in sorted(replies, key=lambda r: r.site)}
        refused: dict[str, dict[str, str]] = {}
        for reply in replies:
            for analysis_id, reason in reply.refusals.items():
                refused.setdefault(analysis_id, {})[reply.site] = reason
                self.refusals.append({"site": reply.site, "analysis": analysis_id, "reason": reason})
        answered = {key: query for key, query in queries.items() if key not in refused}
        totals: dict[str, Contribution | AnalysisError] = {key: Refusal(sites) for key, sites in refused.items()}
        totals.update(reduce_queries(((reply.site, reply.contributions) for reply in replies), answered))
        return totals


def _check(replies: list[Reply], problems: list[str]) -> None:
    """Stop the study, naming every site that answered nothing and why (identical reasons grouped)."""
    reasons: dict[str, list[str]] = {}
    for reply in replies:
        if reply.error:
            reasons.setdefault(reply.error, []).append(reply.site)
    problems = problems + [f"site {', '.join(sorted(sites))}: {reason}" for reason, sites in reasons.items()]
    ids = [reply.site for reply in replies]
    duplicates = sorted({site for site in ids if ids.count(site) > 1})
    if duplicates:
        problems.append(f"two nodes report the same site id '{duplicates[0]}'; give each site its own [site] id")
    if problems:
        raise StudyError("; ".join(sorted(problems)))


class FlowerExchange(SiteExchange):
    """Rounds as Flower messages to the nodes of a Grid."""

    def __init__(self, grid: Grid, nodes: Sequence[int], protocol: Protocol, timeout: float) -> None:
        super().__init__(protocol)
        self.grid, self.nodes, self.timeout = grid, list(nodes), timeout

    def send(self, request: Request) -> tuple[list[Reply], list[str]]:
        messages = [
            Message(request.to_records(), dst_node_id=node, message_type=MESSAGE_TYPE, group_id=str(request.round))
            for node in self.nodes
        ]
        answers = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        problems = [
            f"node {m.metadata.src_node_id} failed: {m.error.reason}" for m in answers if m.has_error()
        ]  # fmt: skip
        if len(answers) < len(self.nodes):
            problems.append(f"{len(self.nodes) - len(answers)} site(s) did not answer within {self.timeout:g} s")
        return [Reply.from_records(m.content) for m in answers if not m.has_error()], problems
