"""One study round across the sites: relay keys, send every pending query, combine the replies.

With secure aggregation (the default) each site masks its additive replies; the coordinator
only ever adds them up modulo 2¹²⁸, where the masks cancel. Each site offers one signed key
per study in its replies; a key round before the first data round collects them (and the
sites' policies, which choose the masking graph). A site that stops answering before it contributed to anything is
left out and the round repeated without it; one that stops after it contributed ends
the analyses still running (leaving it out then would mix cohorts, and re-running earlier
rounds without it would expose its contributions). No partial sum is ever unmasked.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from analyses import fixed_point, registry
from analyses.contract import AnalysisError, Contribution, Query, Refusal, public, reduce_contributions
from analyses.disclosure import Limits, publish
from workbench.errors import StudyError
from workbench.messages import FULL_GRAPH, MESSAGE_TYPE, SPARSE_GRAPH, Reply, Request
from workbench.protocol import Protocol

MINIMUM_SITES = 3
"""Fewer sites cannot hide one from another: such rounds go in the clear if the sites' policies allow it."""


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


@dataclass
class Attempt:
    """What the coordinator sent and received in one attempt of one round (for the transcript)."""

    tag: str
    mode: str
    sites: list[str]
    offers: dict[str, dict[str, str]]
    received: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """Site → `analysis/key` → the array exactly as it arrived (masked limbs, or clear values)."""
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    """Wall time from sending the request to having every reply."""

    @property
    def bytes_per_site(self) -> float:
        """Mean size of the arrays a site sent (what secure aggregation enlarges)."""
        sizes = [sum(v.nbytes for v in arrays.values()) for arrays in self.received.values()]
        return float(np.mean(sizes)) if sizes else 0.0


class SiteExchange:
    """An `analyses.driver.Exchange` over per-site replies.

    Subclasses deliver requests (`send`); this class runs key rounds, masked or clear rounds,
    retries after dropouts, and keeps the sites' replies, refusals and the transcript.
    """

    def __init__(self, protocol: Protocol, sites: int) -> None:
        self.protocol = protocol
        self.secure = protocol.model.privacy.secure_aggregation
        self.expected = sites
        self.active: list[str] | None = None
        """Participating site ids (None until the sites first answered)."""
        self.offers: dict[str, dict[str, str]] = {}
        self.contributed: set[str] = set()
        self.dropped: dict[str, str] = {}
        self.rounds = 0
        self.replies: dict[str, Reply] = {}
        """Each site's latest reply (rows, usage, audit head)."""
        self.refusals: list[dict[str, str]] = []
        """Every refusal of an analysis by a site: site, analysis, reason."""
        self.transcript: list[Attempt] = []

    def send(self, request: Request, sites: list[str] | None) -> tuple[list[Reply], dict[str, str]]:
        """Deliver `request` to `sites` (all when None): the replies, and who failed to answer and why."""
        raise NotImplementedError

    @property
    def mode(self) -> str:
        count = len(self.active) if self.active is not None else self.expected
        return "masked" if self.secure and count >= MINIMUM_SITES else "clear"

    def __call__(self, queries: dict[str, Query]) -> dict[str, Contribution | AnalysisError]:
        round_number = self.rounds + 1
        for attempt in range(1, self.expected + 2):
            mode = self.mode
            if mode == "masked" and set(self.offers) != set(self.active or ["?"]):
                if not self._key_round(round_number, attempt):
                    continue
            tag = f"{round_number}.{attempt}"
            secure: dict[str, Any] = {"mode": mode, "tag": tag, "count": len(self.active or []) or self.expected}
            if mode == "masked":
                secure["peers"] = dict(self.offers)
                secure["graph"] = self.graph()
            record = Attempt(tag, mode, list(self.active or []), dict(self.offers))
            self.transcript.append(record)
            request = Request(self.protocol.text, self.protocol.sha256, round_number, queries, secure)
            started = time.perf_counter()
            replies, failures = self.send(request, self.active)
            record.seconds = time.perf_counter() - started
            record.received = {r.site: _arrays(r) for r in replies}
            if failures:
                lost = self._drop(failures, record)
                if lost:
                    return {key: AnalysisError(lost) for key in queries}
                continue
            _check(replies)
            self.active = sorted(r.site for r in replies)
            record.sites = list(self.active)
            self.offers = {r.site: r.offer for r in replies if r.offer}  # each site's key for the whole study
            self.replies = {r.site: r for r in sorted(replies, key=lambda r: r.site)}
            self.contributed |= set(self.active)
            self.rounds = round_number
            return self._combine(replies, queries, mode)
        raise StudyError(f"round {round_number} failed at every attempt")

    def summary(self) -> dict[str, Any]:
        """How the study was aggregated, for the results."""
        modes = list(dict.fromkeys(a.mode for a in self.transcript if a.mode != "keys"))
        return {
            "requested": self.secure,
            "mode": ", then ".join(modes) or "none",
            "key_authentication": "site identity keys pinned in the protocol's [federation.sites]"
            if "masked" in modes
            else None,
            "contributors": sorted(self.contributed),
            "dropped": self.dropped,
            "attempts": len(self.transcript),
            "thresholds": "cross-site totals" if "masked" in modes else "each site's reply",
            "min_count": self.limits().min_count,
        }

    def graph(self) -> str:
        """The masking graph: the full one if any participant's policy requires it, else the sparse one."""
        full = any(reply.policy.get("full_masking_graph") for reply in self.replies.values())
        return FULL_GRAPH if full else SPARSE_GRAPH

    def limits(self) -> Limits:
        """The rules for published totals: the strictest of the participating sites' policies."""
        policies = [reply.policy for reply in self.replies.values() if reply.policy]
        return Limits(
            min_count=max((p["min_cell_count"] for p in policies), default=1),
            rows_per_parameter=max((p["min_rows_per_parameter"] for p in policies), default=0),
        )

    def check(self) -> dict[str, dict[str, str]]:
        """A dry run at every site: site → analysis → "" (would compute) or the rule that would refuse it.

        A site that would answer nothing at all (not approved, key not pinned, ...) gets its reason
        under the key "*". Nothing is released; each site logs the check in its audit log.
        """
        secure = {"mode": self.mode, "tag": "check", "count": self.expected}
        request = Request(self.protocol.text, self.protocol.sha256, 0, {}, secure, check=True)
        replies, failures = self.send(request, None)
        self.replies = {r.site: r for r in sorted(replies, key=lambda r: r.site)}
        verdicts = {site: {"*": f"no answer: {reason}"} for site, reason in failures.items()}
        for reply in replies:
            verdicts[reply.site] = {"*": reply.error} if reply.error else reply.checks
        return dict(sorted(verdicts.items()))

    def _key_round(self, round_number: int, attempt: int) -> bool:
        """Collect every participant's signed study key and policy; False if some site failed (it is dropped)."""
        tag = f"keys.{round_number}.{attempt}"
        record = Attempt(tag, "keys", list(self.active or []), {})
        self.transcript.append(record)
        secure = {"mode": "masked", "tag": tag, "count": len(self.active or []) or self.expected}
        request = Request(self.protocol.text, self.protocol.sha256, round_number, {}, secure)
        started = time.perf_counter()
        replies, failures = self.send(request, self.active)
        record.seconds = time.perf_counter() - started
        if failures:
            self._drop(failures, record)
            return False
        _check(replies)
        self.active = sorted(r.site for r in replies)
        self.offers = {r.site: r.offer for r in replies}
        self.replies = {r.site: r for r in sorted(replies, key=lambda r: r.site)}
        record.sites, record.offers = list(self.active), dict(self.offers)
        return True

    def _drop(self, failures: dict[str, str], record: Attempt) -> str:
        """Leave out sites that failed; the reason analyses must stop if they had contributed already."""
        record.failed = dict(failures)
        self.dropped.update(failures)
        self.offers = {site: offer for site, offer in self.offers.items() if site not in failures}
        if self.active is not None:
            self.active = [site for site in self.active if site not in failures]
        else:
            self.expected -= len(failures)
        lost = sorted(site for site in failures if site in self.contributed)
        if lost:
            return (
                f"site {', '.join(lost)} stopped answering ({failures[lost[0]]}) after contributing to earlier "
                "rounds; the analyses still running cannot finish without it (leaving it out now would mix "
                "cohorts), so rerun the study when it is back"
            )
        if (len(self.active) if self.active is not None else self.expected) == 0:
            raise StudyError("no site answered: " + "; ".join(f"{s}: {r}" for s, r in failures.items()))
        return ""

    def _combine(
        self, replies: list[Reply], queries: dict[str, Query], mode: str
    ) -> dict[str, Contribution | AnalysisError]:
        refused: dict[str, dict[str, str]] = {}
        for reply in replies:
            for analysis_id, reason in reply.refusals.items():
                refused.setdefault(analysis_id, {})[reply.site] = reason
                self.refusals.append({"site": reply.site, "analysis": analysis_id, "reason": reason})
        totals: dict[str, Contribution | AnalysisError] = {key: Refusal(sites) for key, sites in refused.items()}
        limits = self.limits()
        for analysis_id, query in queries.items():
            if analysis_id in refused:
                continue
            try:
                total = _total(replies, analysis_id, mode)
                if mode == "masked":  # the totals are what the coordinator sees: the rules apply to them
                    manifest = registry.manifest(self.protocol.analyses[analysis_id])
                    total = publish(total, manifest, query.phase, limits, len(replies), query.params)
                totals[analysis_id] = total
            except AnalysisError as error:
                totals[analysis_id] = error
        return totals


def _total(replies: list[Reply], analysis_id: str, mode: str) -> Contribution:
    """Column kinds as their union, every other array as its exact sum (masked arrays unmasked: the masks cancel).

    A reply without the analysis sent nothing for it (e.g. a discovery of numeric columns only: nothing to tell).
    """
    parts = [(r.site, r.contributions.get(analysis_id, {})) for r in replies]
    total = reduce_contributions([(site, {k: v for k, v in c.items() if public(k)}) for site, c in parts])
    if mode == "clear":
        return {**total, **reduce_contributions([(site, {k: v for k, v in c.items() if not public(k)})
                                                 for site, c in parts])}  # fmt: skip
    keys = {key for _, contribution in parts for key in contribution if not public(key)}
    for key in sorted(keys):
        name = f"{analysis_id}/{key}"
        arrays = [contribution.get(key) for _, contribution in parts]
        if (
            any(a is None for a in arrays)
            or len({a.shape for a in arrays}) != 1
            or any(name not in r.masked for r in replies)
        ):
            raise AnalysisError(f"sites sent different shapes or encodings for '{key}'")
        if name in replies[0].integers:  # counts masked modulo 2⁶⁴: uint64 sums wrap exactly
            total[key] = np.sum(np.stack(arrays), axis=0, dtype=np.uint64).view(np.int64)
        else:
            total[key] = fixed_point.decode(fixed_point.total(arrays))
    return total


def _arrays(reply: Reply) -> dict[str, np.ndarray]:
    return {f"{a}/{k}": v for a, arrays in reply.contributions.items() for k, v in arrays.items()}


def _check(replies: list[Reply]) -> None:
    """Stop the study, naming every site that answered nothing and why (identical reasons grouped)."""
    reasons: dict[str, list[str]] = {}
    for reply in replies:
        if reply.error:
            reasons.setdefault(reply.error, []).append(reply.site)
    problems = [f"site {', '.join(sorted(sites))}: {reason}" for reason, sites in reasons.items()]
    ids = [reply.site for reply in replies]
    duplicates = sorted({site for site in ids if ids.count(site) > 1})
    if duplicates:
        problems.append(f"two nodes report the same site id '{duplicates[0]}'; give each site its own [site] id")
    if problems:
        raise StudyError("; ".join(sorted(problems)))


class FlowerExchange(SiteExchange):
    """Rounds as Flower messages to the nodes of a Grid."""

    def __init__(
        self, grid: Grid, nodes: Sequence[int], protocol: Protocol, timeout: float, requester: str = ""
    ) -> None:
        super().__init__(protocol, len(nodes))
        self.grid, self.nodes, self.timeout, self.requester = grid, list(nodes), timeout, requester
        self.node_of: dict[str, int] = {}

    def send(self, request: Request, sites: list[str] | None) -> tuple[list[Reply], dict[str, str]]:
        targets = self.nodes if sites is None else [self.node_of[site] for site in sites]
        messages = [
            Message(
                request.to_records(self.requester), dst_node_id=node, message_type=MESSAGE_TYPE,
                group_id=request.secure.get("tag"),
            )
            for node in targets
        ]  # fmt: skip
        answers = {m.metadata.src_node_id: m for m in self.grid.send_and_receive(messages, timeout=self.timeout)}
        site_of = {node: site for site, node in self.node_of.items()}
        replies, failures = [], {}
        for node in targets:
            message = answers.get(node)
            name = site_of.get(node, f"node {node}")
            if message is None:
                failures[name] = f"no reply within {self.timeout:g} s"
            elif message.has_error():
                failures[name] = f"node failed: {message.error.reason}"
            else:
                reply = Reply.from_records(message.content)
                self.node_of[reply.site] = node
                replies.append(reply)
        if sites is None:
            self.nodes = [node for node in targets if node in self.node_of.values()]
        return replies, failures
