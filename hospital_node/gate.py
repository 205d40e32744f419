"""What every request to a node passes first: an intact audit chain, a logged request, an approved protocol."""

from __future__ import annotations

import functools
import hashlib
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hospital_node import approvals
from hospital_node.audit import AuditLog
from hospital_node.identity import identity_key, public_line
from hospital_node.site import Site, open_site
from workbench.protocol import Protocol

log = logging.getLogger(__name__)


class SiteRefusal(Exception):
    """The site answers nothing for this request; the message says why and what to do."""


@dataclass(frozen=True)
class Admitted:
    site: Site
    audit: AuditLog
    protocol: Protocol


def admit(folder: str | Path, sha256: str, text: str, round_number: int, requester: str, durable: bool = True,
          **details: Any) -> Admitted:  # fmt: skip
    """Open the site, check its audit chain, log the request and return the approved protocol (or refuse).

    With `durable=False` the request entry is written but not yet forced to disk: the caller's next
    durable append (its release or refusal, before anything leaves) commits it.
    """
    site = open_site(folder)
    audit = AuditLog(site.state)
    result = audit.verify()
    if not result.ok:
        raise SiteRefusal(f"the site's audit log is broken ({result.problem}); the node answers nothing until "
                          "its data steward investigates (workbench node audit verify)")  # fmt: skip
    request = {"protocol_sha256": sha256, "study": study_id(text), "round": round_number, "requested_by": requester}
    audit.append_many([("request", {**request, **details})], durable=durable)
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != sha256:
        raise SiteRefusal("the protocol text does not match its SHA-256; refusing")
    if sha256 not in approvals.current(audit):
        raise SiteRefusal(
            f"protocol {sha256[:12]} (study '{study_id(text)}') is not approved at this site; "
            "its data steward can review and approve it with: workbench node approve PROTOCOL --site SITE_FOLDER"
        )
    try:
        return Admitted(site, audit, approvals.approved_protocol(site, sha256))
    except (OSError, ValueError) as error:
        raise SiteRefusal(f"the approved copy of protocol {sha256[:12]} cannot be read ({error})") from None


def log_refusal(folder: str | Path, sha256: str, text: str, round_number: int, reason: str, **details: Any) -> None:
    """Record a refusal of the whole request, if the site's log can be written at all."""
    try:
        site = open_site(folder)
        AuditLog(site.state).append("refusal", protocol_sha256=sha256, study=study_id(text), round=round_number,
                                    reason=reason, **details)  # fmt: skip
    except Exception:  # the refusal itself reaches the coordinator; a missing log is the node's problem
        log.exception("cannot write the audit log")


def identity_line(site: Site) -> str:
    """This site's identity key as an OpenSSH line (what a protocol's [federation.sites] pins)."""
    return public_line(identity_key(site))


@functools.lru_cache(maxsize=64)
def study_id(text: str) -> str:
    try:
        return str(tomllib.loads(text).get("study", {}).get("id", ""))
    except tomllib.TOMLDecodeError:
        return ""


def items(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Name, shape and dtype of each array (what the audit log records of a release)."""
    return [{"name": key, "shape": list(value.shape), "dtype": str(value.dtype)} for key, value in arrays.items()]


def digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every released array's name, dtype, shape and bytes."""
    hasher = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        hasher.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        hasher.update(value.tobytes())
    return hasher.hexdigest()
