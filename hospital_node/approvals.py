"""Protocol approval, the data steward's gate.

An approval is an `approve` entry in the audit log (a `revoke` entry ends it); the
approved protocol's exact text is kept in `state/protocols/<sha256>.toml`, and the
node answers only from that stored text. The log is the single source of truth.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass

from hospital_node.audit import AuditLog
from hospital_node.site import Site
from workbench.protocol import Protocol, parse


@dataclass(frozen=True)
class Approval:
    sha256: str
    study: str
    title: str
    by: str
    time: str


def current(log: AuditLog) -> dict[str, Approval]:
    """Approvals in force: approved and not revoked since."""
    approvals: dict[str, Approval] = {}
    for entry in log.entries():
        if entry["event"] == "approve":
            sha = entry["protocol_sha256"]
            approvals[sha] = Approval(sha, entry["study"], entry["title"], entry["by"], entry["time"])
        elif entry["event"] == "revoke":
            approvals.pop(entry["protocol_sha256"], None)
    return approvals


def approve(site: Site, protocol: Protocol, by: str) -> Approval:
    """Store the protocol's text and record its approval."""
    _store(site, protocol)
    study = protocol.model.study
    entry = AuditLog(site.state).append(
        "approve",
        protocol_sha256=protocol.sha256,
        study=study.id,
        title=study.title,
        by=by,
        analyses={spec.id: spec.type for spec in protocol.model.analysis},  # type: ignore[attr-defined]
    )
    return Approval(protocol.sha256, study.id, study.title, by, entry["time"])


def revoke(site: Site, sha256: str, by: str) -> Approval | None:
    """End an approval; returns it, or None if that protocol was not approved."""
    log = AuditLog(site.state)
    approval = current(log).get(sha256)
    if approval:
        log.append("revoke", protocol_sha256=sha256, study=approval.study, by=by)
    return approval


def approved_protocol(site: Site, sha256: str) -> Protocol:
    """The stored text of an approved protocol (raises FileNotFoundError if it is missing)."""
    text = (site.state / "protocols" / f"{sha256}.toml").read_text(encoding="utf-8")
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != sha256:
        raise ValueError(f"the stored copy of protocol {sha256[:12]} was modified")
    return parse(text, source=f"approved protocol {sha256[:12]}")


def _store(site: Site, protocol: Protocol) -> None:
    folder = site.state / "protocols"
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(protocol.text)
    os.replace(temporary, folder / f"{protocol.sha256}.toml")
