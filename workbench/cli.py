"""`workbench`: run studies, the demo, and check protocols from the command line."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from analyses.contract import Query
from workbench import demo, nodes, protocol, report, results
from workbench.errors import UserError

EXIT_FAILED_ANALYSES = 1
EXIT_USER_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.command(args))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Multi-center research workbench")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a study protocol on the embedded Flower simulation")
    run.add_argument("protocol", type=Path, help="protocol TOML file")
    run.add_argument("--site", dest="sites", action="append", type=Path, required=True, metavar="DIR",
                     help="a hospital's site folder (repeat for each site)")  # fmt: skip
    run.add_argument("--out", type=Path, required=True, help="folder for results.json")
    run.add_argument("--quiet", action="store_true", help="no progress or result tables")
    run.set_defaults(command=_run)

    demo_command = commands.add_parser("demo", help="build demo hospitals from real lung cancer data and run a study")
    demo_command.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for sites and results")
    demo_command.set_defaults(command=_demo)

    validate = commands.add_parser("validate", help="check a protocol and print its SHA-256")
    validate.add_argument("protocol", type=Path)
    validate.set_defaults(command=_validate)

    node = commands.add_parser("node", help="a hospital data steward's tools for one site folder")
    steps = node.add_subparsers(required=True, metavar="ACTION")
    approve = steps.add_parser("approve", help="review what a protocol computes and releases, then approve it")
    approve.add_argument("protocol", type=Path)
    approve.add_argument("--yes", action="store_true", help="approve without asking (after printing the review)")
    revoke = steps.add_parser("revoke", help="withdraw an approval")
    revoke.add_argument("protocol", help="the protocol file, or its SHA-256 (or the first 8+ characters)")
    approvals_list = steps.add_parser("approvals", help="list the protocols approved at this site")
    usage = steps.add_parser("usage", help="queries, releases and rows used per study, from the audit log")
    identity = steps.add_parser(
        "identity", help="print the site's identity key line for a protocol's [federation.sites]"
    )
    privacy = steps.add_parser("privacy", help="the differential-privacy budget spent per study, from the ledger")
    audit = steps.add_parser("audit", help="the tamper-evident audit log")
    audit_steps = audit.add_subparsers(required=True, metavar="ACTION")
    verify = audit_steps.add_parser("verify", help="recompute the hash chain; exit code 1 if it is broken")
    for command, handler in ((approve, nodes.approve), (revoke, nodes.revoke), (approvals_list, nodes.approvals),
                             (usage, nodes.usage), (verify, nodes.verify), (identity, nodes.identity),
                             (privacy, nodes.privacy)):  # fmt: skip
        command.add_argument("--site", type=Path, required=True, metavar="DIR", help="the site folder")
        command.add_argument("--by", default=getpass.getuser(), help="who acts (recorded in the audit log)")
        command.set_defaults(command=handler)
    return parser


def _run(args: argparse.Namespace) -> int:
    study = protocol.load(args.protocol)
    return _execute(study, args.sites, args.out, quiet=args.quiet)


def _demo(args: argparse.Namespace) -> int:
    out: Path = args.out
    sites = demo.build_sites(out / "sites")
    protocol_path = out / "protocol.toml"
    protocol_path.write_text(demo.protocol_text() + demo.roster(sites), encoding="utf-8")
    study = protocol.load(protocol_path)
    print(f"demo: {len(sites)} hospital sites from the NCCTG lung cancer data in {out / 'sites'}", file=sys.stderr)
    demo.approve(sites, study)
    print(f"demo: approved protocol {study.sha256[:12]} at {', '.join(s.name for s in sites)}, as each hospital's "
          "data steward would after reviewing `workbench node approve`", file=sys.stderr)  # fmt: skip
    return _execute(study, sites, out, quiet=False)


def _validate(args: argparse.Namespace) -> int:
    study = protocol.load(args.protocol)
    print(f"{args.protocol}: valid; sha256 {study.sha256}")
    for analysis_id, spec in study.analyses.items():
        print(f"  {analysis_id}: {spec.type} on {', '.join(spec.columns())}")  # type: ignore[attr-defined]
    return 0


def _execute(study: protocol.Protocol, sites: Sequence[Path], out: Path, quiet: bool) -> int:
    from workbench.simulation import simulate  # Flower and Ray load only when a study runs

    started = time.perf_counter()
    run = simulate(study, sites, None if quiet else _progress(started), None if quiet else _training_progress(started))
    document = results.build(study, run, engine="flower-simulation")
    path = results.write(document, out, run)
    if not quiet:
        print(report.render(document))
        print(f"\nresults: {path}", file=sys.stderr)
    problems = results.failed(document)
    for analysis_id, error in problems.items():
        print(f"analysis '{analysis_id}' failed: {error}", file=sys.stderr)
    return EXIT_FAILED_ANALYSES if problems else 0


def _progress(started: float):  # noqa: ANN202
    def show(round_number: int, pending: dict[str, Query]) -> None:
        phases: dict[str, list[str]] = {}
        for analysis_id, query in pending.items():
            phases.setdefault(query.phase, []).append(analysis_id)
        summary = " | ".join(f"{phase}: {', '.join(ids)}" for phase, ids in phases.items())
        print(f"[{time.perf_counter() - started:6.1f}s] round {round_number:2d}  {summary}", file=sys.stderr)

    return show


def _training_progress(started: float):  # noqa: ANN202
    def show(training_id: str, round_number: int, rounds: int, metrics: dict[str, float]) -> None:
        shown = ", ".join(f"{name} {value:.3f}" for name, value in metrics.items())
        print(f"[{time.perf_counter() - started:6.1f}s] training {training_id}: round {round_number}/{rounds}  {shown}",
              file=sys.stderr)  # fmt: skip

    return show


if __name__ == "__main__":
    sys.exit(main())
