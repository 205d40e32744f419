"""The dashboard on a real deployed federation, in a real headless Chromium.

A SuperLink (TLS, node authentication) and three SuperNodes on demo site folders run as separate
processes; `workbench ui --superlink … --key alice` is the researcher's dashboard. The test asks the
connected hospitals where they stand (not approved), has each hospital's steward approve with the
CLI, sees the approvals, checks and runs the study on the federation, and reads the results, the
audit heads and the ethics pack of what came back. Every process is stopped, pass or fail.
"""

from __future__ import annotations

import subprocess
import urllib.request

import pytest

from tests.conftest import roster
from tests.federation import PROTOCOL, Processes, free_port, start_coordinator, start_node, wait_for, workbench
from tests.test_dashboard_browser import ARTIFACTS, CHROMIUM, _idle, _page, _shot
from workbench import api, demo

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployed")
    certs, logs, scratch, laptop = root / "certs", root / "logs", root / "tmp", tmp_path_factory.mktemp("laptop")
    logs.mkdir()
    scratch.mkdir()
    folders = demo.build_sites(root / "sites")[:3]
    sites = [folder.name for folder in folders]
    subprocess.run(workbench("certs", "init", "--out", certs, "--sites", ",".join(sites)), check=True)
    subprocess.run(workbench("certs", "researcher", "alice", "--out", certs / "researchers"), check=True)
    workspace = laptop / "workspace"
    workspace.mkdir()
    # What the researcher designed, as the designer writes it (and sends to every steward to approve).
    (workspace / "draft.toml").write_text(api.protocol_text(api.draft_of(PROTOCOL + roster(folders))))
    port, ui_port = free_port(), free_port()
    processes = Processes(logs)
    try:
        start_coordinator(processes, certs, port, root / "coordinator", scratch)
        for site, folder in zip(sites, folders, strict=True):
            start_node(processes, site, folder, port, certs)
        processes.start("dashboard", workbench("ui", "--workspace", workspace, "--port", ui_port, "--superlink",
                                               f"127.0.0.1:{port}", "--root-cert", certs / "ca.crt", "--key",
                                               certs / "researchers" / "alice"))  # fmt: skip
        wait_for(lambda: _healthy(ui_port), 90)
        yield {"url": f"http://localhost:{ui_port}", "folders": folders, "workspace": workspace,
               "processes": processes}  # fmt: skip
    finally:
        processes.stop_all()


def _healthy(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2).read() == b"ok"
    except OSError:
        return False


@pytest.fixture(scope="module")
def page(deployed):
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])  # fmt: skip
        tab = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
        tab.set_default_timeout(60_000)
        tab.goto(deployed["url"])
        yield tab
        browser.close()


@pytest.fixture(autouse=True)
def evidence(request, page, deployed):
    """On failure: a screenshot, the page's text and the ends of the dashboard's and coordinator's logs."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        page.screenshot(path=str(ARTIFACTS / "federation-failure.png"), full_page=True)
        print("page text:", page.locator("body").inner_text()[-3000:], sep="\n")
        for name in ("dashboard", "coordinator"):
            print(f"{name} log:", deployed["processes"].log(name)[-3000:], sep="\n")


def _go(page, name: str) -> None:
    """Open a page from the sidebar. Now and then Streamlit's sidebar briefly lists the page files instead
    of the app's navigation; a user reloads, and so does the test."""
    try:
        page.get_by_role("link", name=name).wait_for(timeout=15_000)
    except playwright.Error:
        page.reload()
        _idle(page)
    _page(page, name)


def _ask(page) -> None:
    page.get_by_role("button", name="Ask the connected hospitals (dry run)").click()
    _idle(page)
    page.get_by_text("hospital-3").first.wait_for(state="attached", timeout=180_000)  # a cell of the table


def test_the_researchers_dashboard_runs_a_study_on_the_deployed_federation(page, deployed):
    _go(page, "Sites")
    page.get_by_text("Federation: SuperLink 127.0.0.1:").wait_for()
    _ask(page)
    page.get_by_text("is not approved at this site", exact=False).first.wait_for(state="attached")
    _shot(page, "federation-sites-unapproved")
    for folder in deployed["folders"]:  # each hospital's steward, at the node
        done = subprocess.run(workbench("node", "approve", deployed["workspace"] / "draft.toml", "--site", folder,
                                        "--yes", "--by", "steward"), capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
    _ask(page)
    page.get_by_text("would compute everything").first.wait_for(state="attached", timeout=180_000)
    _shot(page, "federation-sites-approved")

    _go(page, "Run")
    page.get_by_role("button", name="Check (dry run)").click()
    page.get_by_text("will compute", exact=True).first.wait_for(state="attached", timeout=180_000)
    page.get_by_role("button", name="Run on the federation").click()
    page.get_by_text("Finished: see Results.").wait_for(timeout=300_000)
    _shot(page, "federation-run")

    _go(page, "Results")
    page.get_by_role("heading", name="km_sex · kaplan_meier").wait_for()
    page.get_by_role("heading", name="cox · cox").wait_for()
    _shot(page, "federation-results")

    _go(page, "Audit")
    page.get_by_text("audit chain head").first.wait_for(state="attached")
    page.get_by_text("hospital-2").first.wait_for(state="attached")
    _shot(page, "federation-audit")

    _go(page, "Ethics export")
    page.get_by_role("combobox", name="Export for", exact=True).click()
    page.get_by_role("option").nth(1).click()  # the run that came back
    _idle(page)
    page.get_by_role("button", name="Generate the ethics-review pack").click()
    page.get_by_role("button", name="Download ethics.pdf").wait_for(timeout=120_000)
    _shot(page, "federation-ethics")
    assert "Traceback" not in deployed["processes"].log("dashboard")
