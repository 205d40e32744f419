"""What the dashboard needs from the workbench, in one place (the UI reads and writes only through here).

A *workspace* folder holds the researcher's draft protocol, the local site folders (for the
embedded simulation) and every run. Pointed at a deployed federation (`workbench ui --superlink`),
the dashboard runs and checks studies there instead, as the researcher whose key it was given, and
every run's outputs come back into the same run folders:

```
workspace/
  draft.toml      the protocol being designed
  sites/<site>/   site folders (hospital_node layout)
  runs/<run>/     protocol.toml, job.json, log.txt, status.json, out/ (results, transcript, models)
                  and ethics/ (the ethics-review pack of that run)
  ethics/draft/   the ethics-review pack of the draft protocol
```
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import tomli_w
from pydantic import TypeAdapter, ValidationError

from analyses import registry
from analyses.disclosure import rule
from hospital_node import approvals, steward
from hospital_node.audit import AuditLog
from hospital_node.gate import identity_line
from hospital_node.policy import Policy
from hospital_node.privacy_ledger import PrivacyLedger
from hospital_node.site import Site, SiteError, open_site
from hospital_node.usage import by_study
from workbench import demo
from workbench.errors import UserError
from workbench.protocol import Protocol, ProtocolError, parse

SPECS: TypeAdapter[Any] = TypeAdapter(registry.AnySpec)
DEFAULT_LIMITS = Policy().limits
"""The disclosure limits of a site with the default policy."""
CHECK_TIMEOUT_S = 600.0
"""How long a dry run may take before it is stopped (its simulated sites with it)."""
WILL_COMPUTE = "will compute"
"""A dry run's verdict where a site would compute an analysis."""


def protocol_text(draft: dict[str, Any]) -> str:
    """The draft (a protocol as nested dicts) as TOML, sections in the protocol's order."""
    order = ["study", "cohort", "variables", "privacy", "federation", "analysis", "training"]
    ordered = {key: draft[key] for key in order if draft.get(key) not in (None, [], {})}
    return tomli_w.dumps(_without_empty(ordered))


def draft_of(text: str) -> dict[str, Any]:
    """A protocol's TOML as an editable draft (or a UserError naming the problem)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"not valid TOML: {error}") from None


def check(text: str) -> tuple[Protocol | None, str]:
    """The validated protocol, or None and the schema's message."""
    try:
        return parse(text, source="draft"), ""
    except ProtocolError as error:
        return None, str(error).removeprefix("draft: ")


def undeclared(draft: dict[str, Any]) -> dict[str, list[str]]:
    """Columns the draft's analyses group by without declaring their values in `[variables]` (column → analyses)."""
    declared = draft.get("variables") or {}
    found: dict[str, list[str]] = {}
    for block in draft.get("analysis", []):
        try:
            spec = SPECS.validate_python(block)
        except ValidationError:
            continue
        for name in spec.grouping():
            if name not in declared:
                found.setdefault(name, []).append(spec.id)
    return found


def disclosure(protocol: Protocol) -> dict[str, pd.DataFrame]:
    """Per analysis, every array a site may send or check, with the rule applied to it in this study's mode
    (masked or in the clear) under the default site policy; each site's review shows its own policy's rules."""
    tables, mode = {}, masked(protocol)
    for analysis_id, spec in protocol.analyses.items():
        rows = [
            {"round": item.phase, "name": item.key, "shape": item.shape, "meaning": item.meaning,
             "rule": rule(item, DEFAULT_LIMITS, mode) + (" (per time cell)" if item.per_time else "")}
            for item in registry.manifest(spec)
        ]  # fmt: skip
        tables[analysis_id] = pd.DataFrame(rows)
    return tables


def masked(protocol: Protocol) -> bool:
    """Whether the study's rounds will be masked (secure aggregation on, among at least 3 pinned sites)."""
    return steward.masked_study(protocol)


def site_folders(workspace: Path) -> list[Path]:
    folder = workspace / "sites"
    return (
        sorted(p for p in folder.iterdir() if (p / "site.toml").exists() or (p / "patients.csv").exists())
        if folder.exists()
        else []
    )


def build_demo_sites(workspace: Path) -> list[Path]:
    """The five NCCTG lung hospitals of `workbench demo`, in the workspace."""
    return demo.build_sites(workspace / "sites")


def columns(folders: list[Path], table: str = "patients") -> list[str]:
    """Column names of the sites' cohort tables (the header only; no values are read)."""
    names: dict[str, None] = {}
    for folder in folders:
        try:
            path = open_site(folder).table_path(table)
        except SiteError:
            continue
        if path.suffix == ".csv":
            names.update(dict.fromkeys(pd.read_csv(path, nrows=0).columns))
    return list(names)


def roster(folders: list[Path]) -> dict[str, str]:
    """`[federation.sites]`: each site's identity key."""
    return {open_site(folder).id: identity_line(open_site(folder)) for folder in folders}


@dataclass(frozen=True)
class Federation:
    """A deployed federation the dashboard works on, and the researcher's key it signs with."""

    superlink: str
    root_cert: Path
    key: Path

    def arguments(self) -> list[str]:
        """The CLI's arguments for it."""
        return ["--superlink", self.superlink, "--root-cert", str(self.root_cert), "--key", str(self.key)]

    def describe(self) -> str:
        return f"SuperLink {self.superlink} (TLS, CA {self.root_cert.name}), as researcher {self.key.name}"


FEDERATION = ("WORKBENCH_SUPERLINK", "WORKBENCH_ROOT_CERT", "WORKBENCH_RESEARCHER_KEY")
"""Environment variables `workbench ui --superlink` sets for the dashboard."""


def federation() -> Federation | None:
    """The federation the dashboard was pointed at, or None (local site folders, embedded simulation)."""
    superlink, root_cert, key = (os.environ.get(name, "") for name in FEDERATION)
    return Federation(superlink, Path(root_cert), Path(key)) if superlink else None


def connected_sites(protocol: Protocol, document: dict[str, Any]) -> pd.DataFrame:
    """The hospitals that answered a dry run on the federation: site id, the identity-key fingerprint
    the protocol pins for it, whether it approved this protocol, and what it would compute."""
    pinned = protocol.model.federation.sites
    rows = []
    for site, answers in sorted(document["sites"].items()):
        whole = answers.get("*", "")
        refused = [name for name, reason in answers.items() if reason and name != "*"]
        rows.append({
            "site": site,
            "identity key (pinned, SHA-256)": fingerprint(pinned[site]) if site in pinned else "not pinned",
            "approved": not ("not approved" in whole),
            "verdict": whole or (f"would refuse {', '.join(refused)}" if refused else "would compute everything"),
        })  # fmt: skip
    return pd.DataFrame(rows)


def fingerprint(line: str) -> str:
    """An OpenSSH public key line's fingerprint, as `ssh-keygen -l` shows it (SHA256:…)."""
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def site_status(folder: Path, protocol: Protocol | None) -> dict[str, Any]:
    """A site as its steward's tools see it: policy, approval of `protocol`, budget, usage, audit."""
    site = open_site(folder)
    log = AuditLog(site.state)
    verification = log.verify()
    spent = sum(item["epsilon"] for item in PrivacyLedger(site.state).read()["trainings"].values())
    usage = by_study(log.entries()) if verification.ok else {}
    return {
        "site": site.id,
        "name": site.name,
        "rows": _rows(site),
        "min cell count": site.policy.min_cell_count,
        "allowed analyses": ", ".join(site.policy.allowed_analyses) or "all",
        "approved": bool(protocol and protocol.sha256 in approvals.current(log)),
        "ε spent": round(spent, 3),
        "ε remaining": round(site.policy.max_epsilon - spent, 3),
        "studies": len(usage),
        "queries": sum(u.queries for u in usage.values()),
        "audit": "intact" if verification.ok else f"BROKEN: {verification.problem}",
    }


def approval_review(folder: Path, protocol: Protocol) -> tuple[str, list[str]]:
    """The steward's review of `protocol` at this site, and why its policy would refuse it."""
    site = open_site(folder)
    return steward.preview(site, protocol), steward.conflicts(site, protocol)


def approve(folder: Path, protocol: Protocol, by: str) -> None:
    """Record the approval, as this (local) site's data steward."""
    approvals.approve(open_site(folder), protocol, by=by)


def start_run(workspace: Path, protocol: Protocol, folders: list[Path], on: Federation | None = None) -> Path:
    """Run the study on the embedded simulation at `folders` (or on the federation `on`) in a separate
    process; return its run folder."""
    run = workspace / "runs" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    run.mkdir(parents=True)
    (run / "protocol.toml").write_text(protocol.text, encoding="utf-8")
    where = on.arguments() if on else [a for f in folders for a in ("--site", str(f))]
    arguments = ["run", str(run / "protocol.toml"), *where, "--out", str(run / "out")]
    (run / "job.json").write_text(json.dumps({"arguments": arguments}))
    with open(run / "log.txt", "w") as log:
        subprocess.Popen([sys.executable, "-m", "workbench.job", str(run)], stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)  # fmt: skip
    return run


def dry_run(protocol: Protocol, folders: list[Path], on: Federation | None = None) -> dict[str, Any]:
    """`workbench check --json` at these site folders, in a separate process (the Flower simulation stays out of
    the dashboard): the mode, per site per analysis "" (would compute) or why it would refuse ("*": the site
    would answer nothing), and the limits. Nothing is released; each site logs the check in its audit log.

    Raises UserError with the CLI's message when the check cannot run.
    """
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "protocol.toml"
        path.write_text(protocol.text, encoding="utf-8")
        where = on.arguments() if on else [a for f in folders for a in ("--site", str(f))]
        command = [sys.executable, "-m", "workbench.cli", "check", str(path), *where, "--json"]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) as process:  # fmt: skip
            try:
                stdout, stderr = process.communicate(timeout=CHECK_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the simulation's workers too
                process.communicate()
                raise UserError(f"the dry run did not finish within {CHECK_TIMEOUT_S:g} s") from None
    if process.returncode in (0, 1):
        try:
            return json.loads(stdout)
        except json.JSONDecodeError:
            pass  # a crash (exit code 1 with a traceback): report its last line below
    lines = stderr.strip().splitlines()
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    raise UserError(errors[-1] if errors else lines[-1] if lines else f"the check failed (exit {process.returncode})")


def verdicts(protocol: Protocol, document: dict[str, Any]) -> pd.DataFrame:
    """A dry run as a table: one row per analysis and training, one column per site, each cell
    "will compute" or the reason the site would refuse (for a site that would answer nothing, its reason)."""
    names = [*protocol.analyses, *protocol.trainings]
    columns = {site: [_verdict(answers, name) for name in names] for site, answers in document["sites"].items()}
    return pd.DataFrame(columns, index=pd.Index(names, name="analysis"))


def _verdict(answers: dict[str, str], name: str) -> str:
    reason = answers.get("*", answers.get(name, "the site did not answer for it"))
    return reason or WILL_COMPUTE


def ethics_folder(workspace: Path, run: Path | None) -> Path:
    """Where the ethics-review pack of a run (or, for None, of the draft protocol) is written."""
    return run / "ethics" if run else workspace / "ethics" / "draft"


def ethics_for_draft(workspace: Path, protocol: Protocol) -> Path:
    """The ethics-review pack of the draft protocol, with the workspace's sites (what will happen)."""
    from workbench.ethics import export

    out = ethics_folder(workspace, None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.toml").write_text(protocol.text, encoding="utf-8")
    export(out / "protocol.toml", site_folders(workspace), None, out)
    return out


def ethics_for_run(run: Path) -> Path:
    """The ethics-review pack of a finished run, with the sites it ran on (what did happen)."""
    from workbench.ethics import export

    arguments = json.loads((run / "job.json").read_text())["arguments"]
    sites = [Path(arguments[k + 1]) for k, flag in enumerate(arguments) if flag == "--site"]
    export(run / "protocol.toml", sites, run / "out", ethics_folder(run.parent.parent, run))
    return ethics_folder(run.parent.parent, run)


def run_state(run: Path) -> dict[str, Any]:
    """`running`, `done`, `failed` (some analyses) or `refused` (nothing ran), with the log so far."""
    log = (run / "log.txt").read_text(errors="replace") if (run / "log.txt").exists() else ""
    status = json.loads((run / "status.json").read_text()) if (run / "status.json").exists() else None
    if status is None:
        state = "running"
    else:
        state = {0: "done", 1: "failed", 2: "refused"}.get(status["exit_code"], "refused")
    errors = [line.removeprefix("error: ") for line in log.splitlines() if line.startswith("error: ")]
    return {"state": state, "log": log, "error": errors[-1] if errors else "", "results": run / "out" / "results.json"}


def runs(workspace: Path) -> list[Path]:
    """Run folders, newest first."""
    folder = workspace / "runs"
    return sorted((p for p in folder.iterdir() if p.is_dir()), reverse=True) if folder.exists() else []


def results(run: Path) -> dict[str, Any]:
    return json.loads((run / "out" / "results.json").read_text())


def audit_heads(results: dict[str, Any]) -> pd.DataFrame:
    """Per site of a run: its audit chain head when it last answered, and what it recorded for the study."""
    return pd.DataFrame([
        {"site": site["id"], "audit head": site.get("audit_head", ""), "queries": site.get("usage", {}).get("queries"),
         "releases": site.get("usage", {}).get("releases"), "refusals": site.get("usage", {}).get("refusals")}
        for site in results.get("sites", [])
    ])  # fmt: skip


def audit(folder: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """The site's audit chain check, and its entries as a table."""
    site = open_site(folder)
    log = AuditLog(site.state)
    verification = log.verify()
    entries = pd.DataFrame(log.entries())
    return {"site": site.id, "intact": verification.ok, "entries": verification.entries,
            "head": verification.head, "problem": verification.problem}, entries  # fmt: skip


def _rows(site: Site) -> int | None:
    try:
        path = site.table_path("patients")
    except SiteError:
        return None
    with open(path, "rb") as stream:
        return max(sum(1 for _ in stream) - 1, 0) if path.suffix == ".csv" else None


def _without_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_empty(v) for k, v in value.items() if v is not None and v != "" and v != []}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value
