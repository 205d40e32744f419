"""What travels between coordinator and nodes, as Flower records.

Shared by `workbench` (the ServerApp) and `hospital_node` (the ClientApp); it holds
no coordinator logic. A request carries the protocol text and hash and one query
per pending analysis; a reply carries the site id and one array per contribution key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from analyses.contract import Contribution, Query

if TYPE_CHECKING:
    from flwr.app import RecordDict

MESSAGE_TYPE = "query"

FLOWER_TESTED = "1.42.0"
"""The Flower version whose internals the quick deployment runtime relies on (it falls back to stock Flower
with any other; see `hospital_node.supernode` and `workbench.quick_grid`)."""

FULL_GRAPH, SPARSE_GRAPH = "full", "sparse"
"""Secure aggregation's masking graphs: every pair of participants, or a sparse Harary graph (`hospital_node.masking`)."""


@dataclass(frozen=True)
class Request:
    protocol_text: str
    protocol_sha256: str
    round: int
    queries: dict[str, Query]
    secure: dict[str, Any] = field(default_factory=dict)
    """Aggregation of this round: `mode` ("masked" or "clear"), `tag` (round.attempt), `count`
    (the participants) and, when masked, `peers` (site → signed key offer relayed by the coordinator)
    and `graph` (FULL_GRAPH or SPARSE_GRAPH)."""
    check: bool = False
    """A dry run: the node runs every gate for every analysis of the protocol and releases nothing."""

    def to_records(self, requester: str = "") -> RecordDict:
        """The message content; `requester` names the researcher the coordinator authenticated."""
        from flwr.app import ConfigRecord, RecordDict  # Flower loads only where messages travel

        return RecordDict(
            {
                "study": ConfigRecord(
                    {
                        "protocol": self.protocol_text,
                        "sha256": self.protocol_sha256,
                        "round": self.round,
                        "queries": json.dumps({k: q.to_json() for k, q in self.queries.items()}),
                        "secure": json.dumps(self.secure),
                        "check": self.check,
                        "requested_by": requester,
                    }
                )
            }
        )

    @classmethod
    def from_records(cls, content: RecordDict) -> Request:
        study = content.config_records["study"]
        queries = {k: Query.from_json(v) for k, v in json.loads(str(study["queries"])).items()}
        secure = json.loads(str(study["secure"]))
        return cls(str(study["protocol"]), str(study["sha256"]), int(study["round"]), queries, secure,
                   bool(study.get("check", False)))  # fmt: skip


@dataclass(frozen=True)
class Reply:
    site: str
    rows: int | None = None
    """Rows in the site's cohort (after the protocol's filters); not sent under secure aggregation."""
    contributions: dict[str, Contribution] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)
    """Analysis id → why the site refused it (nothing of it was sent)."""
    usage: dict[str, Any] = field(default_factory=dict)
    """The site's metered usage of this study, from its audit log."""
    audit_head: str = ""
    """Hash of the last entry of the site's audit chain."""
    offer: dict[str, str] = field(default_factory=dict)
    """The site's signed key for this study's masked rounds."""
    masked: list[str] = field(default_factory=list)
    """`analysis/key` names of contributions sent masked (fixed-point limbs), not in the clear."""
    integers: list[str] = field(default_factory=list)
    """`analysis/key` names of masked integer contributions (counts, masked as uint64 modulo 2⁶⁴; the others are
    128-bit fixed-point limbs)."""
    policy: dict[str, Any] = field(default_factory=dict)
    """The site's limits the coordinator applies to published cross-site totals (`Policy.published`)."""
    checks: dict[str, str] = field(default_factory=dict)
    """A dry run's verdicts: analysis id → "" (would compute) or the rule that would refuse it."""
    notes: list[str] = field(default_factory=list)
    """A dry run's warnings about the site's cohort (e.g. concept ids its vocabulary lacks); never a value."""
    error: str = ""
    """Why the site answers nothing at all."""

    def to_records(self) -> RecordDict:
        from flwr.app import ConfigRecord, RecordDict

        layout, blob = _pack(self.contributions)
        return RecordDict(
            {
                "site": ConfigRecord(
                    {
                        "id": self.site,
                        "rows": -1 if self.rows is None else self.rows,
                        "refusals": json.dumps(self.refusals),
                        "usage": json.dumps(self.usage),
                        "audit_head": self.audit_head,
                        "offer": json.dumps(self.offer),
                        "masked": json.dumps(self.masked),
                        "integers": json.dumps(self.integers),
                        "policy": json.dumps(self.policy),
                        "checks": json.dumps(self.checks),
                        "notes": json.dumps(self.notes),
                        "error": self.error,
                        "layout": json.dumps(layout),
                        "data": blob.tobytes(),
                    }
                ),
            }
        )

    @classmethod
    def from_records(cls, content: RecordDict) -> Reply:
        site = content.config_records["site"]
        contributions = _unpack(json.loads(str(site["layout"])), np.frombuffer(bytes(site["data"]), dtype=np.uint8))
        return cls(
            site=str(site["id"]),
            rows=None if int(site["rows"]) < 0 else int(site["rows"]),
            contributions=contributions,
            refusals=json.loads(str(site["refusals"])),
            usage=json.loads(str(site["usage"])),
            audit_head=str(site["audit_head"]),
            offer=json.loads(str(site["offer"])),
            masked=json.loads(str(site["masked"])),
            integers=json.loads(str(site["integers"])),
            policy=json.loads(str(site["policy"])),
            checks=json.loads(str(site["checks"])),
            notes=json.loads(str(site["notes"])),
            error=str(site["error"]),
        )


def _pack(contributions: dict[str, Contribution]) -> tuple[list[list[Any]], np.ndarray]:
    """Every array's bytes in one buffer, and where each lies: [analysis/key, dtype, shape, offset, size].

    The buffer travels inside the reply's one ConfigRecord: on the deployment engine every record and
    Flower Array is a separate object pushed to and pulled from the SuperLink, one request each.
    """
    layout, parts, offset = [], [], 0
    for analysis_id, contribution in contributions.items():
        for key, value in contribution.items():
            data = np.ascontiguousarray(value)
            layout.append([f"{analysis_id}/{key}", data.dtype.str, list(data.shape), offset, data.nbytes])
            parts.append(data.view(np.uint8).ravel())
            offset += data.nbytes
    return layout, np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)


def _unpack(layout: list[list[Any]], blob: np.ndarray) -> dict[str, Contribution]:
    contributions: dict[str, Contribution] = {}
    for name, dtype, shape, offset, size in layout:
        analysis_id, key = name.split("/", 1)
        value = blob[offset : offset + size].view(np.dtype(dtype)).reshape(shape)
        contributions.setdefault(analysis_id, {})[key] = value
    return contributions
