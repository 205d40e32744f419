"""What a data steward reads: the approval preview, approvals, audit verification and usage."""

from __future__ import annotations

import base64
import hashlib

from analyses import registry
from analyses.columns import label
from analyses.disclosure import rule
from hospital_node import approvals, masking, omop, usage
from hospital_node.audit import AuditLog
from hospital_node.identity import existing_public_line
from hospital_node.privacy_ledger import PrivacyLedger
from hospital_node.site import Site, SiteError
from workbench.messages import SPARSE_GRAPH
from workbench.protocol import Protocol
from workbench.training_spec import TrainingSpec, manifest, parameter_count


def preview(site: Site, protocol: Protocol) -> str:
    """What the protocol computes and exactly what would leave this site, per analysis and round."""
    policy = site.policy
    cohort = protocol.model.cohort
    filters = "; ".join(f"{f.column} {f.op}" + (f" {f.value}" if f.value is not None else "") for f in cohort.filters)
    lines = [
        f"Study '{protocol.model.study.id}': {protocol.model.study.title}",
        f"Protocol SHA-256: {protocol.sha256}",
        *_cohort(site, protocol, filters),
        _population(protocol),
        *_declared(protocol),
        f"Site policy: minimum count {policy.min_cell_count}, per time cell {policy.min_time_cell_count}; "
        f"analyses: {', '.join(policy.allowed_analyses) or 'all'}; variables: {', '.join(policy.allowed_variables) or 'all'}",
    ]
    lines += _aggregation(site, protocol)
    masked = masked_study(protocol)
    for spec in protocol.analyses.values():
        lines.append("")
        lines.append(f"Analysis '{spec.id}' ({spec.type}) reads: {', '.join(protocol.variables(spec))}")  # type: ignore[attr-defined]
        for item in registry.manifest(spec):
            lines.append(f"  {item.phase:<9} {item.key:<18} {item.shape:<28} {item.meaning}")
            lines.append(f"  {'':<9} {'':<18} → {rule(item, policy.limits, masked)}")
    for training in protocol.model.training:
        lines += ["", *_training(site, training)]
    lines += ["", "Nothing else leaves the site: no rows, no identifiers, no images."]
    return "\n".join(lines)


def _cohort(site: Site, protocol: Protocol, filters: str) -> list[str]:
    """The cohort in words; for an OMOP cohort also what the node reads from the CDM and what its vocabulary lacks."""
    rows = f", rows where {filters}" if filters else ", all rows"
    omop_cohort = protocol.model.cohort.omop
    if omop_cohort is None:
        return [f"Cohort: table '{protocol.model.cohort.table}'{rows}"]
    lines = [f"Cohort: defined on the site's OMOP CDM ({site.data.label()}), one row per person{rows}:"]
    lines += [f"  {sentence}" for sentence in omop_cohort.in_words()]
    lines.append("The node reads (read-only) only these CDM tables and columns:")
    lines += [f"  {table}: {', '.join(columns)}" for table, columns in omop_cohort.reads().items()]
    if site.data.source != "omop":
        return [*lines, '  ! this site\'s data are files: set [data] source = "omop" in site.toml to take part']
    try:
        lines += [f"  ! {warning}" for warning in omop.vocabulary_warnings(site, omop_cohort)]
    except SiteError as error:
        lines.append(f"  ! {error}")
    return lines


def masked_study(protocol: Protocol) -> bool:
    """Whether the study's rounds will be masked: secure aggregation on, among at least 3 pinned sites."""
    return protocol.model.privacy.secure_aggregation and len(protocol.model.federation.sites) >= masking.MINIMUM_SITES


def _population(protocol: Protocol) -> str:
    if protocol.model.cohort.missing == "per_analysis":
        return 'Missing values: each analysis drops only its own incomplete rows ([cohort] missing = "per_analysis")'
    columns = protocol.study_columns
    return (f"Missing values: one population for every analysis: the cohort rows with a value in {', '.join(columns)} "
            "(so the study's analyses never difference each other)")  # fmt: skip


def _declared(protocol: Protocol) -> list[str]:
    levels = protocol.levels
    if not levels:
        return []
    shown = "; ".join(f"{name}: {', '.join(label(level) for level in values)}" for name, values in levels.items())
    return [f"Declared values ([variables]): {shown} — a value outside these stops the study at this site, "
            "and no site sends its own list of values"]  # fmt: skip


def _training(site: Site, spec: TrainingSpec) -> list[str]:
    weights = parameter_count(spec.architecture, len(spec.features))
    reads = {
        "image_classification": f"the DICOM files in '{spec.images}' (pixel data and geometry only) labelled by "
        f"'{spec.labels}'",
        "image_segmentation": f"the DICOM series in '{spec.images}' (pixel data and geometry only) and their NIfTI "
        f"masks in '{spec.masks}'",
    }.get(spec.task, f"columns {', '.join(spec.columns())}")
    privacy = spec.privacy
    return [
        f"Training '{spec.id}' ({spec.task}, model {spec.architecture}, {spec.rounds} rounds, {spec.strategy}) reads {reads}",
        f"  the model's weights: {weights:,} parameters ({weights * 4:,} bytes) per round",
        *[
            f"  {item.phase:<9} {item.key:<20} {item.meaning} ({rule(item, site.policy.limits, False)})"
            for item in manifest(spec.task)
        ],
        f"  privacy: DP-SGD (Opacus), target ε = {privacy.target_epsilon:g} for the whole training at δ = {privacy.delta:g}, "
        f"clipping norm {privacy.max_grad_norm:g}; this site's budget: max_epsilon {site.policy.max_epsilon:g}",
    ]


def conflicts(site: Site, protocol: Protocol) -> list[str]:
    """Why the site's policy would refuse parts of this protocol."""
    problems = [
        f"analysis '{spec.id}': {problem}"
        for spec in protocol.model.analysis
        for problem in site.policy.conflicts(spec.type, protocol.variables(spec))  # type: ignore[attr-defined]
    ]
    for training in protocol.model.training:
        problems += [f"training '{training.id}': {problem}"
                     for problem in site.policy.conflicts(training.task, [*training.columns(), *protocol.cohort_columns])]  # fmt: skip
        if training.privacy.delta > site.policy.delta:
            problems.append(
                f"training '{training.id}': δ = {training.privacy.delta:g} is above the site's δ = {site.policy.delta:g}"
            )
        if training.privacy.target_epsilon > site.policy.max_epsilon:
            problems.append(f"training '{training.id}': target ε = {training.privacy.target_epsilon:g} is above the site's "
                            f"max_epsilon = {site.policy.max_epsilon:g}")  # fmt: skip
    if not protocol.model.privacy.secure_aggregation and not site.policy.clear_aggregation:
        problems.append("secure aggregation is off but the site's policy has clear_aggregation = false")
    pinned = protocol.model.federation.sites
    if protocol.model.privacy.secure_aggregation and pinned and pinned.get(site.id) != existing_public_line(site):
        problems.append("[federation.sites] does not pin this site's identity key (workbench node identity prints it)")
    return problems


def _aggregation(site: Site, protocol: Protocol) -> list[str]:
    pinned = protocol.model.federation.sites
    policy = site.policy
    clear = (f"With fewer than {masking.MINIMUM_SITES} sites this site "
             f"{'sends in the clear' if policy.clear_aggregation else 'refuses'} (clear_aggregation = "
             f"{str(policy.clear_aggregation).lower()}); in the clear each site applies its minimums to its own reply.")  # fmt: skip
    if not protocol.model.privacy.secure_aggregation:
        return ["Secure aggregation: OFF — the coordinator sees this site's replies as sent; this site applies its "
                "minimum counts, ranges and guards to its own reply before it leaves."]  # fmt: skip
    share = ("this site's own masked share is also held to its minimums (own_share_minimums = true: stricter, "
             "refuses more studies)" if policy.own_share_minimums else
             "this site's own masked share is not held to them: it is noise to everyone (own_share_minimums = false)")  # fmt: skip
    return [
        "Secure aggregation: ON — every reply is masked except column kinds (numeric or text); no per-site list of "
        f"values, times or levels and not the cohort's size leaves this site. The coordinator learns only sums over "
        f"at least {max(policy.min_sites, masking.MINIMUM_SITES)} sites (min_sites = {policy.min_sites}).",
        f"Thresholds: the minimum counts apply where data become visible, to the published cross-site totals (the "
        f"largest minimum of the participating sites, at least this site's {policy.min_cell_count}); {share}. "
        f"{clear}",
        _collusion(policy.full_masking_graph, len(pinned)),
        f"Peers pinned by the protocol ({len(pinned)}): "
        + (
            ", ".join(f"{name} {fingerprint(line)}" for name, line in pinned.items())
            or "none — masked rounds will be refused"
        ),
    ]


def _collusion(full: bool, sites: int) -> str:
    """What masking hides among `sites` pinned sites, and from whom."""
    sparse = masking.degree(sites, SPARSE_GRAPH)
    if full or sparse == sites - 1:
        return (f"Collusion: every site masks with all {max(sites - 1, 0)} others; this site's share is exposed only "
                "if the coordinator and all other pinned sites collude (they would subtract their own shares from "
                "the total)" + (" (full_masking_graph = true)." if full else "."))  # fmt: skip
    return (f"Collusion: each site masks with {sparse} of the {sites - 1} others (a sparse graph drawn at random from "
            f"the sites' signed keys); this site's share is exposed only if the coordinator and all {sparse} of its "
            f"neighbours collude, and fewer than {sparse} colluding sites learn nothing beyond the total. A steward "
            "can require masking with every site: full_masking_graph = true.")  # fmt: skip


def fingerprint(line: str) -> str:
    """SHA256:… of an OpenSSH public key, as `ssh-keygen -l` prints it."""
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def approvals_text(site: Site) -> str:
    found = approvals.current(AuditLog(site.state))
    if not found:
        return f"{site.id}: no approved protocols"
    rows = [f"{a.sha256}  {a.study:<24} approved {a.time} by {a.by}" for a in found.values()]
    return "\n".join([f"{site.id}: {len(found)} approved protocol(s)", *rows])


def verify_text(site: Site) -> tuple[bool, str]:
    result = AuditLog(site.state).verify()
    if not result.ok:
        return False, f"{site.id}: audit log BROKEN: {result.problem} ({result.entries} intact entries before it)"
    note = "; an unfinished last line from an interrupted write will be discarded" if result.incomplete_tail else ""
    return True, f"{site.id}: audit log intact: {result.entries} entries, head {result.head}{note}"


def usage_text(site: Site) -> str:
    studies = usage.by_study(AuditLog(site.state).entries())
    if not studies:
        return f"{site.id}: no study has queried this site"
    header = f"{'study':<24} {'protocol':<14} {'queries':>7} {'releases':>8} {'refusals':>8} {'rows':>6}  last use"
    rows = [
        f"{u.study:<24} {u.protocol_sha256[:12]:<14} {u.queries:>7} {u.releases:>8} {u.refusals:>8} {u.rows:>6}  {u.last}"
        for u in studies.values()
    ]
    return "\n".join([f"{site.id}: usage from the audit log", header, *rows])


def privacy_text(site: Site) -> str:
    """The site's privacy ledger: ε spent per study and training, against its max_epsilon."""
    trainings = PrivacyLedger(site.state).read()["trainings"]
    total = sum(item["epsilon"] for item in trainings.values())
    lines = [f"{site.id}: ε spent {total:.3f} of max_epsilon {site.policy.max_epsilon:g} (δ ≤ {site.policy.delta:g})"]
    for key, item in trainings.items():
        sha, training = key.split("/", 1)
        lines.append(f"  {item['study']:<24} {sha[:12]}  {training:<16} ε {item['epsilon']:.3f} at δ {item['delta']:g}, "
                     f"rounds {item['rounds']}")  # fmt: skip
    return "\n".join(lines)
