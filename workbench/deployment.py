"""Real sites on Flower's deployment engine: a SuperLink at the coordinator, a SuperNode per hospital.

The same ServerApp logic (`run_study`) and ClientApp run as in the simulation; only the launcher
differs. TLS everywhere; only SuperNodes whose public keys were registered are admitted; nodes
dial out to the SuperLink's single port. `workbench run --superlink` submits the study with
`flwr run`; the ServerApp runs next to the SuperLink and writes the same results folder.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from hospital_node.site import SiteError, open_site
from workbench import handback, researchers, results, sealed
from workbench.errors import StudyError, UserError
from workbench.protocol import parse
from workbench.quick_grid import quick_object_pulls
from workbench.server_app import check_study, run_study

CONNECTION = "workbench"
server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    """The coordinator's side of a deployed study (run by the SuperLink's SuperExec).

    Runs only a request signed by a researcher registered at this coordinator; the outputs go back
    sealed to that request's reply key through the run's log (`workbench.handback`), never to a path
    the submitter names.
    """
    config = context.run_config
    problem = quick_object_pulls()
    if problem:
        print(f"coordinator: {problem}; replies wait for Flower's own retries", flush=True)
    check = bool(config.get("check"))
    try:
        protocol = parse(str(config["protocol"]), source=str(config["protocol_name"]))
        request = json.loads(str(config.get("request") or "{}"))
        if not os.environ.get(RESEARCHERS) or not os.environ.get(STATE):
            raise UserError("this SuperLink was not started with workbench coordinator start, so it knows no "
                            "researcher keys")  # fmt: skip
        researcher = researchers.authenticate(
            Path(os.environ[RESEARCHERS]), Path(os.environ[STATE]), request, protocol.sha256,
            "check" if check else "run",
        )  # fmt: skip
        recipient = base64.b64decode(str(request["reply_key"]))
    except (UserError, KeyError, ValueError) as error:
        _emit("error", f"the coordinator refused the request: {error}".encode())
        return
    print(f"coordinator: study '{protocol.model.study.id}' requested by {researcher}", flush=True)
    with tempfile.TemporaryDirectory(prefix="workbench-study-") as name:
        out = Path(name)
        try:
            sites = int(config["sites"]) or _connected(grid)
            timeout = float(config["timeout"])
            if check:
                status: dict[str, Any] = {"ok": True, "check": check_study(grid, protocol, sites, timeout, researcher)}
            else:
                run = run_study(grid, protocol, sites, _log, _log_training, timeout, researcher)
                document = results.build(protocol, run, engine="flower-deployment")
                results.write({**document, "requested_by": researcher}, out, run)
                status = {"ok": True}
        except UserError as error:
            status = {"error": str(error)}
        (out / STATUS).write_text(json.dumps(status))
        _emit("sealed", sealed.seal(handback.pack(out), recipient))


RESEARCHERS, STATE = "WORKBENCH_RESEARCHERS", "WORKBENCH_COORDINATOR_STATE"
"""Set by `workbench coordinator start` for its ServerApps: the researcher keys folder, the coordinator's state."""
STATUS = "status.json"


def _emit(kind: str, payload: bytes) -> None:
    for line in handback.frames(kind, payload):
        sys.stdout.write(line)
    sys.stdout.flush()


def _connected(grid: Grid, settle: float = 8.0) -> int:
    """How many nodes are connected once the count has stopped changing for `settle` seconds."""
    count, since = len(list(grid.get_node_ids())), time.monotonic()
    while time.monotonic() - since < settle:
        time.sleep(0.5)
        now = len(list(grid.get_node_ids()))
        if now != count:
            count, since = now, time.monotonic()
    if not count:
        raise StudyError("no hospital node is connected to the SuperLink")
    return count


def _log(round_number: int, pending: dict[str, Any]) -> None:
    print(f"round {round_number}: " + ", ".join(f"{key} {query.phase}" for key, query in pending.items()), flush=True)


def _log_training(training_id: str, round_number: int, rounds: int, metrics: dict[str, float]) -> None:
    shown = ", ".join(f"{name} {value:.3f}" for name, value in metrics.items())
    print(f"training {training_id}: round {round_number}/{rounds} {shown}", flush=True)


def _tool(name: str) -> str:
    """A Flower executable from this environment."""
    return str(Path(sys.executable).parent / name)


QUICK = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05", "FLWR_TELEMETRY_ENABLED": "0"}
"""Flower's documented settings for shorter waits: a SuperExec polling for tasks every 50 ms, no telemetry
(an exiting Flower process may otherwise wait up to 4 s for it)."""


def _environment(**extra: str) -> dict[str, str]:
    """This environment's executables first on PATH (Flower starts `flower-superexec` by name), quick settings."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**QUICK, **os.environ, "PATH": path, **extra}


def connection_home(folder: Path, superlink: str, root_cert: Path) -> Path:
    """A private FLWR_HOME whose `workbench` connection points at the SuperLink (never the user's ~/.flwr)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n[superlink.{CONNECTION}]\n'
        f"address = {json.dumps(superlink)}\nroot-certificates = {json.dumps(str(root_cert.resolve()))}\n"
    )
    return folder


def start_coordinator(certs: Path, host: str, port: int, state: Path) -> int:
    """Run a SuperLink with TLS and SuperNode authentication; register every key in `certs/nodes/`."""
    files = {name: certs / name for name in ("ca.crt", "superlink.crt", "superlink.key")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    keys = sorted((certs / "nodes").glob("*.pub"))
    if missing or not keys:
        raise UserError(
            f"{certs}: missing {', '.join(missing) or 'nodes/*.pub'}; create them with workbench certs init"
        )
    state.mkdir(parents=True, exist_ok=True)
    command = [
        _tool("flower-superlink"), "--ssl-ca-certfile", str(files["ca.crt"]), "--ssl-certfile",
        str(files["superlink.crt"]), "--ssl-keyfile", str(files["superlink.key"]), "--enable-supernode-auth",
        "--host", host, "--port", str(port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    known = researchers.registered(certs / "researchers")
    environment = _environment(FLWR_HOME=str(state / "flwr-home"), **{RESEARCHERS: str((certs / "researchers").resolve()),
                               STATE: str(state.resolve())})  # fmt: skip
    superlink = subprocess.Popen(command, env=environment)
    try:
        _wait_for_port(host, port, superlink)
        home = connection_home(state / "flwr-cli", f"{host}:{port}", files["ca.crt"])
        for key in keys:
            done = subprocess.run([_tool("flwr"), "supernode", "register", str(key), CONNECTION],
                                  env=_environment(FLWR_HOME=str(home)), capture_output=True, text=True)  # fmt: skip
            if done.returncode != 0 and "already" not in (done.stdout + done.stderr).lower():
                raise UserError(f"registering {key.name} failed: {(done.stdout + done.stderr).strip()[-300:]}")
        names = ", ".join(key.stem for key in keys)
        print(f"coordinator: SuperLink on {host}:{port} (TLS, node authentication); registered: {names}; "
              f"researchers: {', '.join(sorted(known.values())) or 'none (add keys with workbench certs researcher)'}",
              flush=True)  # fmt: skip
        return superlink.wait()
    finally:
        if superlink.poll() is None:
            superlink.terminate()
            superlink.wait(timeout=30)


def start_node(site: Path, superlink: str, root_cert: Path, key: Path, port: int) -> int:
    """Become this hospital's SuperNode, bound to its site folder (dials out to the SuperLink)."""
    try:
        folder = open_site(site).path
    except SiteError as error:
        raise UserError(str(error)) from None
    for path in (root_cert, key):
        if not path.is_file():
            raise UserError(f"{path}: not found")
    arguments = [
        "--root-certificates", str(root_cert), "--superlink", superlink, "--auth-supernode-private-key", str(key),
        "--node-config", f"site='{folder}'", "--port", str(port),
    ]  # fmt: skip
    from hospital_node import supernode

    problem = supernode.problems()
    if problem:
        print(f"node: {problem}; starting stock Flower (rounds take seconds)", file=sys.stderr, flush=True)
        command = [_tool("flower-supernode"), *arguments]
    else:
        command = [sys.executable, "-m", "hospital_node.supernode", *arguments]
    os.execve(command[0], command, _environment(FLWR_HOME=str(folder / "state" / "flwr-home")))
    return 0  # not reached


def run_remote(
    protocol_path: Path, superlink: str, root_cert: Path, key: Path, out: Path, sites: int, timeout: float, quiet: bool
) -> dict[str, Any]:
    """Submit the study to a running federation as the researcher holding `key`, follow its log, and
    unpack what comes back into `out`; returns its results document."""
    with tempfile.TemporaryDirectory(prefix="workbench-outputs-") as name:
        back = Path(name)
        _submit(protocol_path, superlink, root_cert, key, {"sites": sites, "timeout": timeout}, quiet, back)
        (back / STATUS).unlink()
        handback.place(back, out)
    return json.loads((out / "results.json").read_text())


def check_remote(
    protocol_path: Path, superlink: str, root_cert: Path, key: Path, sites: int, timeout: float
) -> dict[str, Any]:
    """A dry run on a running federation: every connected site's verdict per analysis (nothing released)."""
    with tempfile.TemporaryDirectory(prefix="workbench-outputs-") as name:
        config = {"check": True, "sites": sites, "timeout": timeout}
        return _submit(protocol_path, superlink, root_cert, key, config, True, Path(name))["check"]


def _submit(
    protocol_path: Path, superlink: str, root_cert: Path, key: Path, config: dict[str, Any], quiet: bool, back: Path
) -> dict[str, Any]:
    """Run the study app on the federation with `flwr run`, signed with the researcher's `key`; unpack the
    sealed outputs into `back` and return their status document."""
    text = protocol_path.read_text(encoding="utf-8") if protocol_path.is_file() else ""
    protocol = parse(text, source=protocol_path.name) if text else None
    if protocol is None:
        raise UserError(f"{protocol_path}: protocol file not found")
    for path, what in ((root_cert, "root certificate"), (key, "researcher key")):
        if not path.is_file():
            raise UserError(f"{path}: {what} not found")
    private, public = sealed.reply_key()
    request = researchers.sign(key, protocol.sha256, public, "check" if config.get("check") else "run")
    with tempfile.TemporaryDirectory(prefix="workbench-run-") as name:
        folder = Path(name)
        app = folder / "app"
        app.mkdir()
        shutil.copy(resources.files("workbench").joinpath("flower_app/pyproject.toml"), app / "pyproject.toml")
        overrides = {"protocol": protocol.text, "protocol_name": protocol_path.name, "request": json.dumps(request),
                     **config, "timeout": float(config["timeout"])}  # fmt: skip
        (folder / "run.toml").write_text("".join(f"{k} = {json.dumps(value)}\n" for k, value in overrides.items()))
        home = connection_home(folder / "flwr-home", superlink, root_cert)
        command = [_tool("flwr"), "run", str(app), CONNECTION, "--run-config", str(folder / "run.toml"), "--stream"]
        shown: list[str] = []
        reader = handback.Reader(shown.append if quiet else _progress)
        with subprocess.Popen(command, env=_environment(FLWR_HOME=str(home)), text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) as flwr:  # fmt: skip
            for line in flwr.stdout or []:
                reader.feed(line)
    if "error" in reader.payloads:
        raise StudyError(reader.payloads["error"].decode())
    if "sealed" not in reader.payloads:
        detail = "; ".join(reader.problems) or "".join(shown).strip()[-500:] or "see the log above"
        raise StudyError(f"the study did not run on {superlink} (flwr run exited with {flwr.returncode}; {detail})")
    try:
        handback.unpack(sealed.unseal(reader.payloads["sealed"], private), back)
    except InvalidTag:
        raise StudyError("the outputs that came back do not open with this submission's key; nothing written") from None
    outcome = json.loads((back / STATUS).read_text())
    if "error" in outcome:
        raise StudyError(outcome["error"])
    return outcome


def _progress(line: str) -> None:
    sys.stderr.write(line)
    sys.stderr.flush()


def _wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"the SuperLink exited (code {process.returncode}); is port {port} free?")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise UserError(f"the SuperLink did not open {host}:{port} within {timeout:g} s")
