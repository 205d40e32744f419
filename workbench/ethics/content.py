"""What the ethics-review export says (`ethics.json`), derived from the code's own declarations.

Everything comes from the protocol, the analyses' disclosure manifests, the training
manifest, the sites' policies and, after a run, its results and the sites' audit logs;
the wording is left to the templates.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analyses import registry
from analyses.columns import label
from analyses.disclosure import DISCOVERY, Control, Item, rule
from analyses.spec import Spec
from hospital_node import approvals, dicom_series, imaging, masking
from hospital_node.audit import AuditLog
from hospital_node.identity import existing_public_line
from hospital_node.policy import Policy
from hospital_node.privacy_ledger import PrivacyLedger
from hospital_node.site import Site
from hospital_node.steward import conflicts, fingerprint, masked_study
from workbench import results as results_module
from workbench.errors import UserError
from workbench.messages import FULL_GRAPH, SPARSE_GRAPH
from workbench.omop_cohort import OmopCohort
from workbench.protocol import Protocol
from workbench.training_spec import TrainingSpec, manifest

FORMAT = "workbench-ethics/2"

ROLE_FIELDS = ("outcome", "duration", "event", "variable", "variables", "row", "column", "group", "covariates",
               "exposure", "strata", "patient", "start", "stop", "treatment", "confounders")  # fmt: skip
"""Spec fields that name columns, in the order the roles are listed."""

RISKS = ("small_cells", "differencing", "risk_set_differencing", "membership_inference", "gradient_inversion",
         "model_reidentification", "coordinator_sees_site_values", "protocol_tampering")  # fmt: skip


def build(protocol: Protocol, sites: list[Site], run: Path | None, language: str) -> dict[str, Any]:
    """The whole document; `run` is a finished study's output folder (with results.json)."""
    results = _results(run, protocol) if run else None
    model = protocol.model
    masked = masked_study(protocol)
    return {
        "format": FORMAT,
        "language": language,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "stage": "completed" if results else "planned",
        "study": {
            **model.study.model_dump(),
            "protocol_sha256": protocol.sha256,
            "protocol_file": protocol.source,
        },
        "sites": _sites(protocol, sites, results),
        "processing": {
            "cohort_table": model.cohort.table,
            "filters": [f.model_dump() for f in model.cohort.filters],
            "omop": _omop(model.cohort.omop),
            "analyses": len(protocol.analyses),
            "trainings": len(model.training),
            "diagram": "data-flow.png",
        },
        "aggregation": _aggregation(protocol, sites, results, masked),
        "disclosure": {
            "discovery": _rounds(DISCOVERY, sites, masked)[0]["items"],
            "analyses": [_analysis(protocol, spec, sites, masked) for spec in protocol.analyses.values()],
            "trainings": [_training(spec, sites) for spec in model.training],
        },
        "minimisation": _minimisation(protocol),
        "privacy": _privacy(protocol, sites, results),
        "imaging": _imaging(model.training),
        "risks": _risks(protocol, sites),
        "security": {
            "secure_aggregation": model.privacy.secure_aggregation,
            "pinned_identity_keys": len(model.federation.sites),
            "engine": results["engine"] if results else None,
        },
        "audit": _audit(sites, results) if results or sites else None,
        "run": _run(results, run) if results and run else None,
        "annex": {
            "protocol_text": protocol.text,
            "software": results["software"] if results else results_module.software(),
            "hashes": {
                "protocol_sha256": protocol.sha256,
                **({"results_sha256": _sha256(run / "results.json")} if results and run else {}),
            },
        },
    }


def _results(run: Path, protocol: Protocol) -> dict[str, Any]:
    path = run / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found; --run takes the folder a finished `workbench run` wrote") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: cannot read the results ({error})") from None
    if not isinstance(results, dict) or results.get("format") != results_module.FORMAT:
        raise UserError(f"{path}: not a workbench results file (format {results_module.FORMAT})")
    if results.get("protocol_sha256") != protocol.sha256:
        raise UserError(f"{path}: this run used protocol {str(results.get('protocol_sha256'))[:12]}, not "
                        f"{protocol.sha256[:12]} ({protocol.source}); export with the protocol the run used")  # fmt: skip
    return results


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sites(protocol: Protocol, sites: list[Site], results: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every site the protocol pins, the export was given, or the run used."""
    pinned = protocol.model.federation.sites
    given = {site.id: site for site in sites}
    ran = {site["id"]: site for site in results["sites"]} if results else {}
    out = []
    for site_id in dict.fromkeys([*pinned, *given, *ran]):
        site = given.get(site_id)
        public = existing_public_line(site) if site else None
        approval = approvals.current(AuditLog(site.state)).get(protocol.sha256) if site else None
        out.append({
            "id": site_id,
            "name": site.name if site else None,
            "pinned_fingerprint": fingerprint(pinned[site_id]) if site_id in pinned else None,
            "identity_matches": public == pinned[site_id] if public and site_id in pinned else None,
            "policy": site.policy.model_dump() if site else None,
            "approval": {"by": approval.by, "time": approval.time} if approval else None,
            "conflicts": conflicts(site, protocol) if site else [],
            "rows": ran[site_id]["rows"] if site_id in ran else None,
        })  # fmt: skip
    return out


def _aggregation(protocol: Protocol, sites: list[Site], results: dict[str, Any] | None, masked: bool) -> dict[str, Any]:
    """Where the disclosure rules apply (each site's reply, or the published cross-site totals) and how far
    masking hides a site's share; after a run, as the run reports it."""
    summary = results["secure_aggregation"] if results else {}
    graph = FULL_GRAPH if any(site.policy.full_masking_graph for site in sites) else SPARSE_GRAPH
    return {
        "masked": masked,
        "minimum_sites": masking.MINIMUM_SITES,
        "thresholds": summary.get("thresholds", "cross-site totals" if masked else "each site's reply"),
        "min_count": summary.get("min_count", max((site.policy.min_cell_count for site in sites), default=None)),
        "mode": summary.get("mode"),
        "other_sites": max(len(protocol.model.federation.sites) - 1, 0),
        "graph": graph,
        "neighbours": masking.degree(len(protocol.model.federation.sites), graph),
    }


def _analysis(protocol: Protocol, spec: Spec, sites: list[Site], masked: bool) -> dict[str, Any]:
    return {
        "id": spec.id,
        "type": spec.type,  # type: ignore[attr-defined]
        "variables": _roles(spec),
        "population": protocol.population(spec),
        "time_resolution": _resolution(spec),
        "rounds": _rounds(_own(registry.manifest(spec)), sites, masked),
    }


def _own(manifest: tuple[Item, ...]) -> tuple[Item, ...]:
    """An analysis' items without the discovery round's (one round for the whole study, shown once)."""
    return tuple(item for item in manifest if item not in DISCOVERY)


def _resolution(spec: Spec) -> dict[str, Any] | None:
    """A survival analysis' time resolution: its named grid (None: a width) and the cell width in the
    duration's own unit (1 by default: whole days when durations are days); None for other analyses."""
    if "time_grid" not in type(spec).model_fields:
        return None
    return {"grid": spec.time_grid if isinstance(spec.time_grid, str) else None, "width": spec.grid_width}


def _omop(cohort: OmopCohort | None) -> dict[str, Any] | None:
    """An OMOP cohort in words and the CDM tables and columns each node reads (None for a file cohort)."""
    if cohort is None:
        return None
    return {"definition": cohort.in_words(), "columns": cohort.columns,
            "reads": [{"table": table, "columns": columns} for table, columns in cohort.reads().items()]}  # fmt: skip


def _rounds(manifest: tuple[Item, ...], sites: list[Site], masked: bool) -> list[dict[str, Any]]:
    """Manifest items per round type, in the order the rounds run; `masked`: the study's rounds are masked.

    Under masking every item but column kinds leaves masked, guards and saturation checks included (they
    are checked on the cross-site totals), except the per-time guards, which are not sent at all.
    """
    rounds: dict[str, list[dict[str, Any]]] = {}
    for item in manifest:
        hidden = masked and not item.key.startswith("kind:") and not item.at_site and (item.sent or not item.per_time)
        rounds.setdefault(item.phase, []).append({
            "key": item.key,
            "shape": item.shape,
            "meaning": item.meaning,
            "control": str(item.control),
            "sent": item.sent or hidden,
            "count_rule": item.control in (Control.RANGE, Control.MINIMUM, Control.GUARD, Control.RANK),
            "per_time": item.per_time,
            "masked": hidden,
            "dp_noise": item.phase == "train" and item.key.startswith("<"),
            "rules": _rules(item, sites, masked),
        })  # fmt: skip
    return [{"phase": phase, "items": items} for phase, items in rounds.items()]


def _rules(item: Item, sites: list[Site], masked: bool) -> list[dict[str, Any]]:
    """The rule applied to an item, in the words the steward's review uses, with the sites whose policy
    gives that text (no site folders given: the default policy, and no sites named)."""
    texts: dict[str, list[str]] = {}
    for site in sites:
        texts.setdefault(rule(item, site.policy.limits, masked), []).append(site.id)
    if not sites:
        texts[rule(item, Policy().limits, masked)] = []
    return [{"text": text, "sites": ids} for text, ids in texts.items()]


def _roles(spec: Spec) -> list[dict[str, str]]:
    """Each column the analysis reads with the role it plays (field name of the analysis block).

    The cohort filters' columns are read for every analysis and listed once, under "cohort"."""
    roles: list[dict[str, str]] = []
    columns = set(spec.columns())
    for field in ROLE_FIELDS:
        value = getattr(spec, field, None)
        for name in [value] if isinstance(value, str) else value or []:
            if name in columns:
                roles.append({"name": name, "role": field})
    return roles


def _training(spec: TrainingSpec, sites: list[Site]) -> dict[str, Any]:
    from workbench import models  # torch loads only when a protocol trains

    network = models.build(spec.architecture, len(spec.features))
    tensors = [{"name": name, "shape": list(value.shape), "count": value.numel()}
               for name, value in network.state_dict().items()]  # fmt: skip
    parameters = sum(t["count"] for t in tensors)
    return {
        "id": spec.id,
        "task": spec.task,
        "model": spec.architecture,
        "strategy": spec.strategy,
        "rounds": spec.rounds,
        "local_epochs": spec.local_epochs,
        "batch_size": spec.batch_size,
        "columns": spec.columns(),
        "images": spec.images,
        "tensors": tensors,
        "parameters": parameters,
        "bytes_per_round": parameters * 4,
        "replies": _rounds(manifest(spec.task), sites, masked=False),
    }


def _minimisation(protocol: Protocol) -> dict[str, Any]:
    uses: dict[str, list[dict[str, str]]] = {
        name: [{"analysis": "cohort", "role": "filter"}] for name in protocol.cohort_columns
    }
    for spec in protocol.analyses.values():
        for role in _roles(spec):
            uses.setdefault(role["name"], []).append({"analysis": spec.id, "role": role["role"]})
    for training in protocol.model.training:
        for name in training.columns():
            role = "outcome" if name == training.outcome else "feature"
            uses.setdefault(name, []).append({"analysis": training.id, "role": role})
    declared = {name: [label(level) for level in levels] for name, levels in protocol.levels.items()}
    return {
        "variables": [{"name": name, "uses": used, "levels": declared.get(name)} for name, used in uses.items()],
        "missing": protocol.model.cohort.missing,
        "images": [t.images for t in protocol.model.training if t.images],
        "retention": protocol.model.study.retention,
    }


def _privacy(protocol: Protocol, sites: list[Site], results: dict[str, Any] | None) -> dict[str, Any]:
    trainings = []
    for spec in protocol.model.training:
        spent = results.get("training", {}).get(spec.id, {}).get("epsilon", {}) if results else {}
        trainings.append({"id": spec.id, **spec.privacy.model_dump(), "spent": spent})
    per_site = []
    for site in sites:
        ledger = PrivacyLedger(site.state).read()["trainings"]
        total = sum(item["epsilon"] for item in ledger.values())
        study = sum(item["epsilon"] for key, item in ledger.items() if key.startswith(protocol.sha256 + "/"))
        per_site.append({
            "id": site.id, "min_cell_count": site.policy.min_cell_count,
            "min_time_cell_count": site.policy.min_time_cell_count,
            "min_rows_per_parameter": site.policy.min_rows_per_parameter,
            "max_epsilon": site.policy.max_epsilon, "delta": site.policy.delta,
            "epsilon_spent_by_study": study, "epsilon_spent_total": total,
            "epsilon_remaining": max(site.policy.max_epsilon - total, 0.0),
        })  # fmt: skip
    resolutions = [{"analysis": spec.id, **resolution} for spec in protocol.analyses.values()
                   if (resolution := _resolution(spec))]  # fmt: skip
    return {"sites": per_site, "time_resolutions": resolutions, "trainings": trainings, "accountant": "opacus-rdp",
            "mechanism": "dp-sgd"}  # fmt: skip


def _risks(protocol: Protocol, sites: list[Site]) -> list[dict[str, Any]]:
    model = protocol.model
    types = {spec.type for spec in protocol.analyses.values()}  # type: ignore[attr-defined]
    applies = {
        "small_cells": bool(protocol.analyses),
        "differencing": bool(protocol.analyses),
        "risk_set_differencing": bool(types & {"cox", "cox_time_varying", "ipw_cox"}),
        "membership_inference": bool(model.training),
        "gradient_inversion": bool(model.training),
        "model_reidentification": bool(model.training) or bool(protocol.analyses),
        "coordinator_sees_site_values": True,
        "protocol_tampering": True,
    }
    parameters = {
        "min_cell_counts": sorted({site.policy.min_cell_count for site in sites}),
        "missing": model.cohort.missing,
        "target_epsilons": [t.privacy.target_epsilon for t in model.training],
    }
    return [{"id": risk, "applies": applies[risk], "parameters": parameters} for risk in RISKS]


def _audit(sites: list[Site], results: dict[str, Any] | None) -> dict[str, Any]:
    """Per site: the verified chain (site folders) and the head the run's last reply reported."""
    reported = {site["id"]: site.get("audit_head") or None for site in results["sites"]} if results else {}
    out = []
    for site in sites:
        log = AuditLog(site.state)
        check = log.verify()
        hashes = [entry["hash"] for entry in log.entries()] if check.ok else []
        head = reported.get(site.id)
        out.append({
            "id": site.id, "ok": check.ok, "entries": check.entries, "head": check.head, "problem": check.problem,
            "run_head": head, "run_head_entry": hashes.index(head) + 1 if head in hashes else None,
            "approvals": [asdict(approval) for approval in approvals.current(log).values()],
        })  # fmt: skip
    out += [{"id": site_id, "ok": None, "entries": None, "head": None, "problem": "", "run_head": head,
             "run_head_entry": None, "approvals": []}
            for site_id, head in reported.items() if site_id not in {s.id for s in sites}]  # fmt: skip
    return {"sites": out}


def _run(results: dict[str, Any], run: Path) -> dict[str, Any]:
    """The run in brief; `rows` is None when the sites did not report their cohort sizes (secure aggregation)."""
    rows = [site["rows"] for site in results["sites"]]
    return {
        "folder": run.name,
        "created": results["created"],
        "engine": results["engine"],
        "rounds": results["rounds"],
        "seconds": results["seconds"],
        "refusals": len(results["refusals"]),
        "failed": sorted(results_module.failed(results)),
        "rows": None if None in rows else sum(rows),
    }


def _imaging(trainings: list[TrainingSpec]) -> dict[str, Any]:
    """Each image training's folders and preparation, and the DICOM attributes the node reads for them."""
    images = [t for t in trainings if t.task != "tabular_classification"]
    series = any(t.task == "image_segmentation" for t in images)
    attributes = [*imaging.ATTRIBUTES_READ, *(dicom_series.ATTRIBUTES_READ if series else ())]
    return {
        "used": bool(images),
        "trainings": [
            {"id": t.id, "task": t.task, "images": t.images, "labels": t.labels or t.masks, "prepared": _prepared(t)}
            for t in images
        ],
        "attributes_read": list(dict.fromkeys(attributes)),
    }


def _prepared(spec: TrainingSpec) -> str:
    if spec.task == "image_classification":
        return "one slice, resized to " + "×".join(map(str, spec.image_size))
    window = f"window {spec.window[0]:g} to {spec.window[1]:g}" if spec.window else "percentile 1–99 scaling"
    return (f"series → volume in RAS, resampled to {'×'.join(f'{v:g}' for v in spec.spacing)} mm, "
            f"{'×'.join(map(str, spec.volume_size))} voxels, {window}")  # fmt: skip
