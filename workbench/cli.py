"""`workbench`: run studies, the demo, and check protocols from the command line."""

from __future__ import annotations

import argparse
import contextlib
import functools
import getpass
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from workbench.errors import UserError

if TYPE_CHECKING:
    import psutil

    from analyses.contract import Query
    from workbench.protocol import Protocol
    from workbench.server_app import StudyRun

# Commands import what they need when they run: validate and the steward's `node` commands stay light
# (no Flower, torch, scipy or lifelines on their path).

EXIT_FAILED_ANALYSES = 1
EXIT_USER_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; as the program (`argv` None), a finished `run` or `demo` exits without teardown."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.program = argv is None
    try:
        code = int(args.command(args))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    if args.program and args.command in (_run, _demo):
        _exit_now(code)
    return code


def _exit_now(code: int) -> NoReturn:
    """Exit at once, with this process's child processes (Ray's), once everything is written.

    A finished study otherwise waits up to a second for Flower's threads, ~1.5 s for Ray to stop its
    processes one after another, and ~0.5 s for Python to tear down the objects Flower, Ray and
    pandas left in memory. Ray's processes hold nothing to save: they are killed as `ray stop
    --force` does (asked to stop all at once, they wait for one another for seconds), and the
    command returns once each has died. A dead process's exit status waits for its parent, or for
    the system's init, to collect it (up to seconds): that is not waited for.
    """
    import logging

    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    deadline = time.monotonic() + 5
    for child in children:
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.002)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _load(path: Path) -> Protocol:
    from workbench import protocol

    return protocol.load(path)


def _fail_now(error: UserError) -> NoReturn:
    """Report a user error and end the command at once (Ray's processes, maybe still starting, with it)."""
    print(f"error: {error}", file=sys.stderr)
    _exit_now(EXIT_USER_ERROR)


def _alive(process: psutil.Process) -> bool:
    """Whether `process` still runs (a zombie has died; only its exit status remains)."""
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Multi-center research workbench")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run a study: on the embedded simulation (--site) or a deployment (--superlink)"
    )
    _federation_arguments(run)
    run.add_argument("--out", type=Path, required=True, help="folder for results.json")
    run.add_argument("--quiet", action="store_true", help="no progress or result tables")
    run.set_defaults(command=_run)

    check = commands.add_parser(
        "check", help="dry run: would every site compute every analysis? (releases nothing; each site logs the check)"
    )
    _federation_arguments(check)
    check.add_argument("--json", action="store_true", help="print the verdicts as JSON (site → analysis → reason)")
    check.set_defaults(command=_check)

    ui = commands.add_parser("ui", help="the researcher's dashboard (Streamlit) in the browser")
    ui.add_argument("--workspace", type=Path, default=Path("workbench-workspace"), help="draft, site folders and runs")
    ui.add_argument("--port", type=int, default=8501)
    ui.add_argument("--roles", type=Path, help="TOML file mapping users to roles (default: one local researcher)")
    ui.add_argument("--superlink", metavar="HOST:PORT", help="work on this deployed federation (not local folders)")
    ui.add_argument("--root-cert", type=Path, metavar="FILE", help="with --superlink: the federation CA certificate")
    ui.add_argument("--key", type=Path, metavar="FILE", default=os.environ.get("WORKBENCH_RESEARCHER_KEY"),
                    help="with --superlink: your researcher key (default: $WORKBENCH_RESEARCHER_KEY)")  # fmt: skip
    ui.set_defaults(command=_ui)

    certs = commands.add_parser("certs", help="keys and certificates for a deployment")
    certs_steps = certs.add_subparsers(required=True, metavar="ACTION")
    certs_init = certs_steps.add_parser("init", help="create a CA, the SuperLink's certificate and node key pairs")
    certs_init.add_argument("--out", type=Path, required=True, help="folder for the keys (keep it private)")
    certs_init.add_argument("--sites", required=True, help="comma-separated site ids, one node key pair each")
    certs_init.add_argument("--host", action="append", default=None, metavar="HOST",
                            help="address the SuperLink is reached at (repeatable; default 127.0.0.1 and localhost)")  # fmt: skip
    certs_init.set_defaults(command=_certs_init)
    certs_node = certs_steps.add_parser("node-key", help="at a hospital: create its own node key pair")
    certs_node.add_argument("--site", required=True, help="the site id")
    certs_node.add_argument("--out", type=Path, required=True, help="folder for the key pair")
    certs_node.set_defaults(command=_certs_node)
    certs_researcher = certs_steps.add_parser(
        "researcher", help="a researcher's key pair: the private half for the researcher, the .pub for the coordinator"
    )
    certs_researcher.add_argument("name", help="the researcher's name (what every site's audit log records)")
    certs_researcher.add_argument("--out", type=Path, required=True, help="folder for the key pair")
    certs_researcher.set_defaults(command=_certs_researcher)

    coordinator = commands.add_parser("coordinator", help="the coordinator's SuperLink")
    coordinator_steps = coordinator.add_subparsers(required=True, metavar="ACTION")
    coordinator_start = coordinator_steps.add_parser("start", help="start the SuperLink (TLS, node authentication)")
    coordinator_start.add_argument("--certs", type=Path, required=True, metavar="DIR")
    coordinator_start.add_argument("--host", default="0.0.0.0")
    coordinator_start.add_argument("--port", type=int, default=9092)
    coordinator_start.add_argument("--state", type=Path, default=Path("coordinator-state"), metavar="DIR")
    coordinator_start.set_defaults(command=_coordinator_start)

    demo_command = commands.add_parser(
        "demo",
        help="build demo hospitals (lung: real lung cancer data; eunomia: OMOP CDM databases; segmentation: "
        "synthetic CT series) and run a study",
    )
    demo_command.add_argument("study", nargs="?", choices=["lung", "eunomia", "segmentation"], default="lung",
                              help="lung (default): NCCTG lung cancer, 5 hospitals; eunomia: celecoxib vs diclofenac "
                              "on 4 hospitals' OMOP CDM (DuckDB); segmentation: DP lesion contouring on 5 hospitals' "
                              "CT series from different scanners (about 6 minutes on 2 cores)")  # fmt: skip
    demo_command.add_argument("--out", type=Path, help="folder for sites and results (default out/demo, out/eunomia, "
                              "out/segmentation)")  # fmt: skip
    demo_command.set_defaults(command=_demo)

    validate = commands.add_parser("validate", help="check a protocol and print its SHA-256")
    validate.add_argument("protocol", type=Path)
    validate.set_defaults(command=_validate)

    export = commands.add_parser("export", help="documents generated from a protocol")
    export_steps = export.add_subparsers(required=True, metavar="DOCUMENT")
    ethics = export_steps.add_parser(
        "ethics", help="the ethics-review and data-protection pack: ethics.html, ethics.pdf, ethics.json"
    )
    ethics.add_argument("protocol", type=Path, help="protocol TOML file")
    ethics.add_argument("--site", dest="sites", action="append", type=Path, default=[], metavar="DIR",
                        help="a site folder: adds its policy, approval and audit chain (repeat for each site)")  # fmt: skip
    ethics.add_argument("--run", type=Path, metavar="OUT", help="a finished run's folder: adds what did happen")
    ethics.add_argument("--out", type=Path, required=True, help="folder for the documents")
    ethics.add_argument("--lang", default="en", help="template language (default: en)")
    ethics.add_argument("--templates", type=Path, metavar="DIR", help="folder with ethics.<lang>.html.j2 translations")
    ethics.set_defaults(command=_export_ethics)

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
    node_start = steps.add_parser("start", help="start this hospital's SuperNode, bound to its site folder")
    node_start.add_argument("--site", type=Path, required=True, metavar="DIR")
    node_start.add_argument("--superlink", required=True, metavar="HOST:PORT")
    node_start.add_argument(
        "--root-cert", type=Path, required=True, metavar="FILE", help="the federation CA certificate"
    )
    node_start.add_argument("--key", type=Path, required=True, metavar="FILE", help="this node's private key")
    node_start.add_argument("--port", type=int, default=9094, help="the node's local ClientApp port")
    node_start.set_defaults(command=_node_start)
    for command, handler in ((approve, "approve"), (revoke, "revoke"), (approvals_list, "approvals"),
                             (usage, "usage"), (verify, "verify"), (identity, "identity"),
                             (privacy, "privacy")):  # fmt: skip
        command.add_argument("--site", type=Path, required=True, metavar="DIR", help="the site folder")
        command.add_argument("--by", default=getpass.getuser(), help="who acts (recorded in the audit log)")
        command.set_defaults(command=functools.partial(_node_command, handler))
    return parser


def _node_command(name: str, args: argparse.Namespace) -> int:
    """A steward's `workbench node …` command (`workbench.nodes`, imported only for these)."""
    from workbench import nodes

    return getattr(nodes, name)(args)


def _federation_arguments(command: argparse.ArgumentParser) -> None:
    """A protocol and where its sites are: local site folders (simulated) or a deployed federation."""
    command.add_argument("protocol", type=Path, help="protocol TOML file")
    where = command.add_mutually_exclusive_group(required=True)
    where.add_argument("--site", dest="sites", action="append", type=Path, metavar="DIR",
                       help="a hospital's site folder, simulated here (repeat for each site)")  # fmt: skip
    where.add_argument("--superlink", metavar="HOST:PORT", help="the deployed federation's SuperLink")
    command.add_argument(
        "--root-cert", type=Path, metavar="FILE", help="with --superlink: the federation CA certificate"
    )
    command.add_argument(
        "--key", type=Path, metavar="FILE", default=os.environ.get("WORKBENCH_RESEARCHER_KEY"),
        help="with --superlink: your researcher key (default: $WORKBENCH_RESEARCHER_KEY)",
    )  # fmt: skip
    command.add_argument(
        "--nodes", type=int, default=0, help="with --superlink: wait for this many nodes (default: all connected)"
    )
    command.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for a round's replies")


def _run(args: argparse.Namespace) -> int:
    if args.superlink:
        from workbench import deployment

        _remote_arguments(args)
        document = deployment.run_remote(args.protocol, args.superlink, args.root_cert, args.key, args.out, args.nodes,
                                         args.timeout, args.quiet)  # fmt: skip
        return _report(document, args.out / "results.json", args.quiet)
    if args.program:  # a command of its own: Ray starts now, while the protocol's code, Flower and the apps load
        from workbench import simulation

        def check() -> None:  # a bad protocol or site folder ends the command at once
            _load(args.protocol)
            simulation.check_folders(args.sites)

        simulation.start_early(check, _fail_now)
    study = _load(args.protocol)
    return _execute(study, args.sites, args.out, quiet=args.quiet, exit_when_written=args.program)


def _remote_arguments(args: argparse.Namespace) -> None:
    if args.root_cert is None:
        raise UserError("--superlink needs --root-cert FILE (the federation's CA certificate)")
    if args.key is None:
        raise UserError("--superlink needs --key FILE (your researcher key; the coordinator's operator makes one "
                        "with workbench certs researcher NAME and registers its .pub)")  # fmt: skip
    args.key = Path(args.key)


def _check(args: argparse.Namespace) -> int:
    if args.superlink:
        from workbench import deployment

        _remote_arguments(args)
        from workbench import protocol

        study = protocol.load(args.protocol)
        document = deployment.check_remote(args.protocol, args.superlink, args.root_cert, args.key, args.nodes,
                                           args.timeout)  # fmt: skip
    else:
        from workbench import protocol
        from workbench.simulation import simulate

        study = protocol.load(args.protocol)
        document = simulate(study, args.sites, check=True)
    from workbench import report

    text, ok = report.render_check(study, document)
    print(json.dumps(document, indent=1) if args.json else text)
    return 0 if ok else EXIT_FAILED_ANALYSES


def _ui(args: argparse.Namespace) -> int:
    import subprocess
    from importlib import resources

    app = resources.files("ui").joinpath("app.py")
    environment = {**os.environ, "WORKBENCH_WORKSPACE": str(args.workspace.resolve())}
    if args.roles:
        environment["WORKBENCH_ROLES"] = str(args.roles.resolve())
    if args.superlink:
        _remote_arguments(args)
        for path in (args.root_cert, args.key):
            if not path.is_file():
                raise UserError(f"{path}: not found")
        from workbench.api import FEDERATION

        superlink, root_cert, key = FEDERATION
        environment.update({superlink: args.superlink, root_cert: str(args.root_cert.resolve()),
                            key: str(args.key.resolve())})  # fmt: skip
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
               "--server.headless", "true", "--browser.gatherUsageStats", "false"]  # fmt: skip
    print(f"dashboard: http://localhost:{args.port} (workspace {args.workspace})", file=sys.stderr)
    return subprocess.call(command, env=environment)


def _certs_init(args: argparse.Namespace) -> int:
    from workbench import certs

    sites = [site.strip() for site in args.sites.split(",") if site.strip()]
    written = certs.init(args.out, sites, args.host or ["127.0.0.1", "localhost"])
    print(f"wrote {len(written)} files to {args.out}: ca.crt (give to every hospital), superlink.crt/.key "
          f"(coordinator only), nodes/<site> (each hospital its own) and nodes/<site>.pub (registered at the SuperLink)")  # fmt: skip
    return 0


def _certs_node(args: argparse.Namespace) -> int:
    from workbench import certs

    private, public = certs.node_key(args.out, args.site)
    print(f"wrote {private} (keep it at the hospital) and {public} (send it to the coordinator for nodes/)")
    return 0


def _certs_researcher(args: argparse.Namespace) -> int:
    from workbench import researchers

    private, public = researchers.new_key(args.out, args.name)
    print(f"wrote {private} (for the researcher only: it signs their studies) and {public} (for the "
          "coordinator's certs/researchers/)")  # fmt: skip
    return 0


def _coordinator_start(args: argparse.Namespace) -> int:
    from workbench import deployment

    return deployment.start_coordinator(args.certs, args.host, args.port, args.state)


def _node_start(args: argparse.Namespace) -> int:
    from workbench import deployment

    return deployment.start_node(args.site, args.superlink, args.root_cert, args.key, args.port)


def _demo(args: argparse.Namespace) -> int:
    from workbench import demo

    omop = args.study == "eunomia"
    out: Path = args.out or Path({"lung": "out/demo"}.get(args.study, f"out/{args.study}"))
    build = {"lung": demo.build_sites, "eunomia": demo.build_omop_sites, "segmentation": demo.build_series_sites}
    sites = build[args.study](out / "sites")
    from workbench import protocol

    protocol_path = out / "protocol.toml"
    protocol_path.write_text(demo.protocol_text(args.study) + demo.roster(sites), encoding="utf-8")
    study = protocol.load(protocol_path)
    source = {"lung": "the NCCTG lung cancer data", "eunomia": "Eunomia's OMOP CDM (DuckDB per hospital)",
              "segmentation": "synthetic CT series from five scanners"}[args.study]  # fmt: skip
    print(f"demo: {len(sites)} hospital sites from {source} in {out / 'sites'}", file=sys.stderr)
    demo.approve(sites, study)
    print(f"demo: approved protocol {study.sha256[:12]} at {', '.join(s.name for s in sites)}, as each hospital's "
          "data steward would after reviewing `workbench node approve`", file=sys.stderr)  # fmt: skip
    code = _execute(study, sites, out, quiet=False)
    if code == 0 and not omop:
        print(demo.learning_line(out, sites, study, study.model.training[0].id), file=sys.stderr)
    from workbench.ethics import export

    export(protocol_path, sites, out, out / "ethics")
    print(f"demo: ethics-review pack (PDF, HTML, JSON) in {out / 'ethics'}", file=sys.stderr)
    return code


def _export_ethics(args: argparse.Namespace) -> int:
    from workbench.ethics import export

    written = export(args.protocol, args.sites, args.run, args.out, args.lang, args.templates)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from workbench import protocol

    study = protocol.load(args.protocol)
    print(f"{args.protocol}: valid; sha256 {study.sha256}")
    omop_cohort = study.model.cohort.omop
    if omop_cohort is not None:
        print(f"  cohort (OMOP CDM, one row per person): {', '.join(omop_cohort.columns)}")
        print("\n".join(f"    {line}" for line in omop_cohort.in_words()))
    for analysis_id, spec in study.analyses.items():
        print(f"  {analysis_id}: {spec.type} on {', '.join(spec.columns())}")  # type: ignore[attr-defined]
    return 0


def _execute(study: Protocol, sites: Sequence[Path], out: Path, quiet: bool,
             exit_when_written: bool = False) -> int:  # fmt: skip
    """Run the study on the simulation, write and print its results; with `exit_when_written`, the
    program ends right then (the study is over: Flower and Ray need not wind down first)."""
    from workbench.simulation import simulate  # Flower and Ray load only when a study runs

    def write(run: StudyRun) -> tuple[dict, Path]:
        from workbench import results

        document = results.build(study, run, engine="flower-simulation")
        path = results.write(document, out, run)
        if exit_when_written:
            _exit_now(_report(document, path, quiet))
        return document, path

    started = time.perf_counter()
    document, path = simulate(study, sites, None if quiet else _progress(started),
                              None if quiet else _training_progress(started), then=write,
                              fail=_fail_now if exit_when_written else None)  # fmt: skip
    return _report(document, path, quiet)


def _report(document: dict, path: Path, quiet: bool) -> int:
    """Print the result tables; exit code 1 if some analysis or training failed."""
    from workbench import report, results

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
