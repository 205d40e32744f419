"""Answer one coordinator request from the site's own rows, under the site's policy.

In order: the audit chain must be intact; the request is logged; the protocol must be
approved here (the node then reads its own stored copy); per analysis, the policy must
allow it, the differencing guard must admit its rows, and the disclosure release must
pass. Every release and refusal is logged before the reply leaves.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from analyses import fixed_point, registry
from analyses.contract import Contribution, DataError, Query
from analyses.disclosure import Refused, release
from hospital_node import masking, usage
from hospital_node.audit import AuditLog
from hospital_node.cohort import row_keys, select
from hospital_node.gate import SiteRefusal, admit, digest, identity_line, items, log_refusal
from hospital_node.identity import identity_key
from hospital_node.ledger import Ledger
from hospital_node.masking import KeyStore
from hospital_node.site import Site, SiteError, load_table, open_site
from workbench.messages import Reply, Request
from workbench.protocol import Protocol, ProtocolError

log = logging.getLogger(__name__)


def answer(folder: str | Path, request: Request, requester: str, keys: KeyStore) -> Reply:
    """Every pending analysis' contribution (or refusal), or a reply that says why the site cannot answer.

    `keys` holds the private halves of the secure-aggregation keys this node offered.
    """
    try:
        admitted = admit(
            folder, request.protocol_sha256, request.protocol_text, request.round, requester,
            queries={analysis_id: query.phase for analysis_id, query in request.queries.items()},
            aggregation={key: value for key, value in request.secure.items() if key != "peers"},
        )  # fmt: skip
        site, audit, protocol = admitted.site, admitted.audit, admitted.protocol
        peers = _peers(site, protocol, request)
        private = None
        if peers:
            private = keys.take(peers[site.id])
            if private is None:
                raise SiteRefusal("the key relayed as this site's is not one it offered, or was already used; refusing")
        rows, contributions, refusals = (
            _contributions(site, protocol, request, audit) if request.queries else (0, {}, {})
        )
        masked: dict[str, dict[str, np.ndarray]] = {}
        if private is not None:
            masked, unmaskable = _masked(site, protocol, request, peers, private, contributions)
            for analysis_id, reason in unmaskable.items():
                refusals[analysis_id] = reason
                del contributions[analysis_id]
                audit.append("refusal", protocol_sha256=protocol.sha256, study=protocol.model.study.id,
                             round=request.round, analysis=analysis_id, reason=reason)  # fmt: skip
        for analysis_id, sent in contributions.items():  # logged (fsynced) before anything leaves
            audit.append("release", protocol_sha256=protocol.sha256, study=protocol.model.study.id,
                         round=request.round, analysis=analysis_id, phase=request.queries[analysis_id].phase,
                         rows=rows, items=items(sent), digest=digest(sent),
                         masked=sorted(masked.get(analysis_id, {})))  # fmt: skip
        offer = {}
        if request.secure.get("mode") == "masked":
            offer = masking.offer(identity_key(site), site.id, protocol.sha256, request.secure["tag"], keys)
        entries = audit.entries()
        return Reply(
            site=site.id,
            rows=rows,
            contributions={key: {**value, **masked.get(key, {})} for key, value in contributions.items()},
            refusals=refusals,
            usage=usage.by_study(entries).get(protocol.sha256, usage.Usage()).to_json(),
            audit_head=entries[-1]["hash"],
            offer=offer,
            masked=[f"{a}/{k}" for a, arrays in masked.items() for k in arrays],
            integers=[
                f"{a}/{k}" for a, arrays in masked.items() for k in arrays if contributions[a][k].dtype.kind in "iub"
            ],
        )
    except (SiteError, SiteRefusal, DataError, ProtocolError) as error:
        reason = str(error)
    except Exception as error:  # a node must answer, never crash; details stay in the node's log
        log.exception("site %s: internal error", folder)
        reason = f"internal error at the node ({type(error).__name__}: {error})"
    log_refusal(folder, request.protocol_sha256, request.protocol_text, request.round, reason, analysis=None)
    return Reply(site=_site_id(folder), error=reason)


def _contributions(
    site: Site, protocol: Protocol, request: Request, audit: AuditLog
) -> tuple[int, dict[str, Contribution], dict[str, str]]:
    """Cohort rows, the releasable contribution per analysis, and refusals (logged)."""
    table_name = protocol.model.cohort.table
    table = load_table(site, table_name)
    cohort = select(table, protocol.model.cohort.filters)
    keys = row_keys(table, site.policy.row_id)
    ledger = Ledger(site.state)
    contributions, refusals = {}, {}
    for analysis_id, query in request.queries.items():
        try:
            contributions[analysis_id] = _contribution(site, protocol, cohort, keys, ledger, analysis_id, query)
        except Refused as refusal:
            refusals[analysis_id] = str(refusal)
            audit.append("refusal", protocol_sha256=protocol.sha256, study=protocol.model.study.id,
                         round=request.round, analysis=analysis_id, phase=query.phase, reason=str(refusal))  # fmt: skip
        except DataError as error:
            name = site.table_path(table_name).name
            raise DataError(f"{name}: analysis '{analysis_id}': {error}") from None
    return len(cohort), contributions, refusals


def _peers(site: Site, protocol: Protocol, request: Request) -> dict[str, bytes] | None:
    """The verified peer keys of a masked round (None when the round is in the clear), or SiteRefusal."""
    secure = request.secure
    count = int(secure.get("count", 0))
    if secure.get("mode") != "masked":
        if not site.policy.clear_aggregation:
            raise SiteRefusal(
                "this site sends its contributions only under secure aggregation (its policy has "
                f"clear_aggregation = false); this round has {count} site(s) and secure aggregation "
                f"{'on' if protocol.model.privacy.secure_aggregation else 'off'}"
            )
        if protocol.model.privacy.secure_aggregation and count >= masking.MINIMUM_SITES:
            raise SiteRefusal("the approved protocol requires secure aggregation; refusing to send in the clear")
        return None
    if not protocol.model.privacy.secure_aggregation:
        raise SiteRefusal("a masked round for a protocol without secure aggregation; refusing")
    pinned = protocol.model.federation.sites
    if pinned.get(site.id) != identity_line(site):
        raise SiteRefusal(
            "this site's identity key is not the one pinned in the protocol's [federation.sites]; "
            "print it with: workbench node identity --site SITE_FOLDER"
        )
    if not secure.get("peers"):
        return {}  # the key round: nothing to mask yet
    if site.id not in secure["peers"] or len(secure["peers"]) < masking.MINIMUM_SITES:
        raise SiteRefusal(f"secure aggregation needs this site and at least {masking.MINIMUM_SITES} sites in all")
    try:
        return masking.verify(secure["peers"], pinned, protocol.sha256)
    except masking.MaskingError as error:
        raise SiteRefusal(str(error)) from None


def _masked(
    site: Site, protocol: Protocol, request: Request, peers: dict[str, bytes], private: bytes,
    contributions: dict[str, Contribution],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:  # fmt: skip
    """Masked sums per analysis (union replies stay clear), and analyses whose values cannot be encoded."""
    masked, unmaskable = {}, {}
    for analysis_id, contribution in contributions.items():
        if request.queries[analysis_id].reduce != "sum":
            continue
        try:
            masked.update(masking.mask({analysis_id: contribution}, site.id, private, peers, protocol.sha256,
                                       request.secure["tag"]))  # fmt: skip
        except fixed_point.OutOfRange as error:
            unmaskable[analysis_id] = f"{error}: secure aggregation cannot encode it"
    return masked, unmaskable


def _contribution(
    site: Site, protocol: Protocol, cohort: pd.DataFrame, keys: pd.Series, ledger: Ledger, analysis_id: str,
    query: Query,
) -> dict[str, np.ndarray]:  # fmt: skip
    """One analysis' releasable contribution (its row sets then recorded in the ledger), or Refused."""
    spec = protocol.analyses.get(analysis_id)
    if spec is None:
        raise Refused(f"analysis '{analysis_id}' is not in the approved protocol")
    manifest = registry.manifest(spec)
    if query.phase not in {item.phase for item in manifest}:
        raise Refused(f"phase '{query.phase}' is not part of a {spec.type} analysis")  # type: ignore[attr-defined]
    problems = site.policy.conflicts(spec.type, protocol.variables(spec))  # type: ignore[attr-defined]
    if problems:
        raise Refused("; ".join(problems))
    row_sets = [keys[rows].to_numpy() for rows in spec.row_sets(cohort)]
    for rows in row_sets:
        ledger.check(rows, site.policy.min_cell_count)
    sent = release(registry.local(spec, cohort, query), manifest, query.phase, site.policy.limits)
    for rows in row_sets:
        ledger.record(rows, {"study": protocol.model.study.id, "analysis": analysis_id})
    return sent


def _site_id(folder: str | Path) -> str:
    try:
        return open_site(folder).id
    except SiteError:
        return Path(folder).name
