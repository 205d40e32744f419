"""`workbench node …`: the data steward's commands for one site folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hospital_node import approvals as approval_store
from hospital_node import steward
from hospital_node.audit import AuditLog
from hospital_node.gate import identity_line
from hospital_node.site import Site, SiteError, open_site
from workbench import protocol
from workbench.errors import UserError


def approve(args: argparse.Namespace) -> int:
    site = _site(args.site)
    study = protocol.load(args.protocol)
    print(steward.preview(site, study))
    problems = steward.conflicts(site, study)
    if problems:
        raise UserError(f"{site.id} cannot approve this protocol: " + "; ".join(problems))
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError("approval needs a person: answer the prompt in a terminal, or pass --yes")
        if input(f"\nApprove protocol {study.sha256[:12]} for site {site.id}? [y/N] ").strip().lower() not in (
            "y",
            "yes",
        ):
            print("not approved")
            return 1
    approval_store.approve(site, study, by=args.by)
    print(f"\napproved protocol {study.sha256} at site {site.id} (recorded in {site.state / 'audit.jsonl'})")
    return 0


def revoke(args: argparse.Namespace) -> int:
    site = _site(args.site)
    sha = _sha(site, args.protocol)
    withdrawn = approval_store.revoke(site, sha, by=args.by)
    if withdrawn is None:
        raise UserError(f"protocol {sha[:12]} is not approved at site {site.id}")
    print(f"revoked the approval of protocol {sha} (study '{withdrawn.study}') at site {site.id}")
    return 0


def approvals(args: argparse.Namespace) -> int:
    print(steward.approvals_text(_site(args.site)))
    return 0


def verify(args: argparse.Namespace) -> int:
    intact, text = steward.verify_text(_site(args.site))
    print(text)
    return 0 if intact else 1


def usage(args: argparse.Namespace) -> int:
    print(steward.usage_text(_site(args.site)))
    return 0


def privacy(args: argparse.Namespace) -> int:
    print(steward.privacy_text(_site(args.site)))
    return 0


def identity(args: argparse.Namespace) -> int:
    site = _site(args.site)
    print(f'{site.id} = "{identity_line(site)}"')
    return 0


def _site(folder: Path) -> Site:
    try:
        return open_site(folder)
    except SiteError as error:
        raise UserError(str(error)) from None


def _sha(site: Site, reference: str) -> str:
    """A protocol file's SHA-256, or the approved protocol whose SHA-256 starts with `reference`."""
    if Path(reference).is_file():
        return protocol.load(reference).sha256
    matches = [sha for sha in approval_store.current(AuditLog(site.state)) if sha.startswith(reference.lower())]
    if len(reference) < 8 or len(matches) != 1:
        raise UserError(f"'{reference}' is neither a protocol file nor the start (8+ characters) of one approved here")
    return matches[0]
