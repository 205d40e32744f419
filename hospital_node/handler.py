"""Answer one coordinator request from the site's own rows, under the site's policy.

In order: the audit chain must be intact; the request is logged; the protocol must be
approved here (the node then reads its own stored copy); per analysis, the policy must
allow it, the differencing guard must admit its rows, and the disclosure release must
pass. Every release and refusal is logged before the reply leaves. Under secure
aggregation everything but column kinds leaves masked, and nothing else per site
(not even the cohort's size) is reported.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import numpy as np

from analyses import discovery, fixed_point, registry
from analyses.contract import Contribution, DataError, Query, public
from analyses.disclosure import Refused, release
from hospital_node import dry_run, masking, population, usage
from hospital_node.audit import AuditLog
from hospital_node.gate import SiteRefusal, admit, digest, identity_line, items, log_refusal
from hospital_node.identity import identity_key
from hospital_node.ledger import Ledger
from hospital_node.masking import KeyStore
from hospital_node.site import Site, SiteError, open_site
from workbench.messages import FULL_GRAPH, Reply, Request
from workbench.protocol import Protocol, ProtocolError

log = logging.getLogger(__name__)


def answer(folder: str | Path, request: Request, requester: str, keys: KeyStore) -> Reply:
    """Every pending analysis' contribution (or refusal), or a reply that says why the site cannot answer.

    `keys` holds the private halves of the secure-aggregation keys this node offered.
    """
    private_detail = ""
    try:
        admitted = admit(
            folder, request.protocol_sha256, request.protocol_text, request.round, requester, durable=False,
            queries={analysis_id: query.phase for analysis_id, query in request.queries.items()},
            aggregation={key: value for key, value in request.secure.items() if key != "peers"},
            **({"check": True} if request.check else {}),
        )  # fmt: skip
        site, audit, protocol = admitted.site, admitted.audit, admitted.protocol
        peers = _peers(site, protocol, request)
        masked_round = request.secure.get("mode") == "masked"
        if request.check:
            return _check(site, audit, protocol, masked_round)
        private, offer = (
            masking.study_key(identity_key(site), site.id, protocol.sha256, keys) if masked_round else (None, {})
        )
        neighbours = _neighbours(site, protocol, request, peers, offer) if peers else {}
        if neighbours:
            try:
                masking.claim(keys, protocol.sha256, request.secure["tag"])
            except ValueError as error:
                raise SiteRefusal(str(error)) from None
        rows, contributions, refusals = (
            _contributions(site, protocol, request, audit, masked_round) if request.queries else (0, {}, {})
        )
        masked: dict[str, dict[str, np.ndarray]] = {}
        if neighbours:
            masked, unmaskable = _masked(site, protocol, request, neighbours, private, contributions)
            for analysis_id, reason in unmaskable.items():
                refusals[analysis_id] = reason
                del contributions[analysis_id]
                audit.append("refusal", protocol_sha256=protocol.sha256, study=protocol.model.study.id,
                             round=request.round, analysis=analysis_id, reason=reason)  # fmt: skip
        audit.append_many([  # logged (fsynced, with the request) before anything leaves
            ("release", {"protocol_sha256": protocol.sha256, "study": protocol.model.study.id, "round": request.round,
                         "analysis": analysis_id, "phase": request.queries[analysis_id].phase, "rows": rows,
                         "items": items(sent), "digest": digest(sent), "masked": sorted(masked.get(analysis_id, {}))})
            for analysis_id, sent in contributions.items()
        ])  # fmt: skip
        entries = audit.entries()
        metered = usage.by_study(entries).get(protocol.sha256, usage.Usage()).to_json()
        if masked_round:
            del metered["rows"]  # a site's cohort size is its own: under secure aggregation only totals leave
        return Reply(
            site=site.id,
            rows=None if masked_round else rows,
            contributions={key: {**value, **masked.get(key, {})} for key, value in contributions.items()},
            refusals=refusals,
            usage=metered,
            audit_head=entries[-1]["hash"],
            offer=offer,
            masked=[f"{a}/{k}" for a, arrays in masked.items() for k in arrays],
            integers=[
                f"{a}/{k}" for a, arrays in masked.items() for k in arrays if fixed_point.is_count(contributions[a][k])
            ],
            policy=site.policy.published(),
        )
    except (SiteError, SiteRefusal, DataError, ProtocolError) as error:
        reason = str(error)
        private_detail = getattr(error, "private", "")
    except Exception as error:  # a node must answer, never crash; details stay in the node's log
        log.exception("site %s: internal error", folder)
        reason = f"internal error at the node ({type(error).__name__}: {error})"
    detail = {"detail": private_detail} if private_detail else {}
    log_refusal(folder, request.protocol_sha256, request.protocol_text, request.round, reason, analysis=None, **detail)
    return Reply(site=_site_id(folder), error=reason)


def _check(site: Site, audit: AuditLog, protocol: Protocol, masked: bool) -> Reply:
    """A dry run's reply: per analysis whether this site would compute it; nothing released, nothing recorded."""
    verdicts, private = dry_run.verdicts(site, protocol, masked)
    notes = population.cohort(site, protocol).warnings
    audit.append("check", protocol_sha256=protocol.sha256, study=protocol.model.study.id, verdicts=verdicts,
                 **({"detail": private} if private else {}), **({"notes": notes} if notes else {}))  # fmt: skip
    return Reply(site=site.id, checks=verdicts, notes=notes, policy=site.policy.published(),
                 audit_head=audit.entries()[-1]["hash"])  # fmt: skip


def _contributions(
    site: Site, protocol: Protocol, request: Request, audit: AuditLog, masked: bool
) -> tuple[int, dict[str, Contribution], dict[str, str]]:
    """Cohort rows, the releasable contribution per analysis, and refusals (logged)."""
    study = population.cohort(site, protocol)
    ledger = Ledger(site.state)
    contributions, refusals = {}, {}
    for analysis_id, query in request.queries.items():
        try:
            contributions[analysis_id] = _contribution(site, protocol, study, ledger, analysis_id, query, masked)
        except Refused as refusal:
            refusals[analysis_id] = str(refusal)
            audit.append("refusal", protocol_sha256=protocol.sha256, study=protocol.model.study.id,
                         round=request.round, analysis=analysis_id, phase=query.phase, reason=str(refusal))  # fmt: skip
        except DataError as error:
            name = population.source_name(site, protocol)
            raise DataError(f"{name}: analysis '{analysis_id}': {error}", error.private) from None
    return len(study.rows), contributions, refusals


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
    sites = len(secure["peers"]) if secure.get("peers") else count
    if sites < site.policy.min_sites:
        raise SiteRefusal(f"this site's policy sends masked contributions only among at least {site.policy.min_sites} "
                          f"sites (min_sites); this round has {sites}")  # fmt: skip
    if not secure.get("peers"):
        return {}  # a key round or a dry run: nothing to mask
    if site.id not in secure["peers"]:
        raise SiteRefusal("the masked round's peers do not include this site; refusing")
    try:
        return masking.verify(secure["peers"], pinned, protocol.sha256)
    except masking.MaskingError as error:
        raise SiteRefusal(str(error)) from None


def _neighbours(
    site: Site, protocol: Protocol, request: Request, peers: dict[str, bytes], offer: dict[str, str]
) -> dict[str, bytes]:
    """The verified keys of the peers this site masks with in this round's graph, or SiteRefusal."""
    if peers[site.id] != base64.b64decode(offer["key"]):
        raise SiteRefusal("the key relayed as this site's is not its key for this study; refusing")
    kind = request.secure.get("graph", FULL_GRAPH)
    if kind != FULL_GRAPH and site.policy.full_masking_graph:
        raise SiteRefusal("this site's policy masks only with every other site (full_masking_graph = true); "
                          f"this round uses the {kind} graph")  # fmt: skip
    return {name: peers[name] for name in masking.neighbours(site.id, peers, protocol.sha256, kind)}


def _masked(
    site: Site, protocol: Protocol, request: Request, peers: dict[str, bytes], private: bytes,
    contributions: dict[str, Contribution],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:  # fmt: skip
    """Every additive array masked with `peers` (column kinds stay clear), and analyses whose values cannot be encoded."""
    masked, unmaskable = {}, {}
    for analysis_id, contribution in contributions.items():
        additive = {key: value for key, value in contribution.items() if not public(key)}
        try:
            masked.update(masking.mask({analysis_id: additive}, site.id, private, peers, protocol.sha256,
                                       request.secure["tag"]))  # fmt: skip
        except fixed_point.OutOfRange as error:
            unmaskable[analysis_id] = f"{error}: secure aggregation cannot encode it"
    return masked, unmaskable


def _contribution(
    site: Site, protocol: Protocol, study: population.Cohort, ledger: Ledger, analysis_id: str, query: Query,
    masked: bool,
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
    if query.phase == discovery.PHASE:
        _declared_as_approved(protocol, query)
    row_sets = population.row_sets(protocol, spec, study)
    for rows, columns in row_sets:
        ledger.check(rows, site.policy.min_cell_count, columns)
    used = population.used(protocol, spec, study)
    contribution = registry.local(spec, used, query, len(study.rows) - len(used))
    sent = release(contribution, manifest, query.phase, site.policy.limits, masked)
    for rows, columns in row_sets:
        ledger.record(rows, columns, {"study": protocol.model.study.id, "analysis": analysis_id})
    return sent


def _declared_as_approved(protocol: Protocol, query: Query) -> None:
    """Refuse a discovery query whose declared levels are not the approved protocol's."""
    declared = protocol.levels
    for name, levels in {**query.params["covariates"], **query.params["grouping"]}.items():
        if levels is not None and levels != declared.get(name):
            raise Refused(f"the levels of '{name}' in the request differ from the approved protocol's; refusing")


def _site_id(folder: str | Path) -> str:
    try:
        return open_site(folder).id
    except SiteError:
        return Path(folder).name
