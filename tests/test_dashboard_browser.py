"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright).

`workbench ui` is started on a free localhost port; the test designs the lung protocol in the
forms (declaring the values of sex), creates and approves the demo hospitals, checks the study
with a dry run (every site will compute), runs it on the embedded simulation,
sees the Kaplan–Meier plot and the Cox table, and downloads the protocol. Screenshots of each
page are saved in tests/artifacts/.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
if CHROMIUM is None and os.environ.get("WORKBENCH_REQUIRE_BROWSER"):
    raise RuntimeError(
        "Debian's chromium is required for the browser tests (apt-get install -y chromium chromium-driver)"
    )
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("workspace")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(workspace / "streamlit.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen([sys.executable, "-m", "workbench.cli", "ui", "--workspace", str(workspace), "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError((workspace / "streamlit.log").read_text()) from None
                time.sleep(0.5)
        yield f"http://localhost:{port}", workspace
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def page(dashboard):
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])  # fmt: skip
        context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
        tab = context.new_page()
        tab.set_default_timeout(60_000)
        tab.goto(dashboard[0])
        yield tab
        browser.close()


@pytest.fixture(autouse=True)
def evidence(request, page, dashboard):
    """On failure: a screenshot in tests/artifacts/failure.png, and the page's text and the end of the
    dashboard's log printed into the test report (CI keeps only the report)."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
        print("page text:", page.locator("body").inner_text()[-3000:], sep="\n")
        print("dashboard log:", (dashboard[1] / "streamlit.log").read_text()[-3000:], sep="\n")


def _page(tab, name: str) -> None:
    tab.get_by_role("link", name=name).click()
    tab.get_by_role("heading", name=name if name != "Ethics export" else "Ethics-review export").wait_for()


def _idle(tab) -> None:
    """Wait until Streamlit has finished rerunning the script."""
    time.sleep(0.5)
    tab.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)


def _shot(tab, name: str) -> None:
    tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _select(tab, label: str, option: str) -> None:
    """Pick `option` in a select box or multiselect (typing filters the list, as a user would)."""
    box = tab.get_by_role("combobox", name=label, exact=True).first
    box.click()
    box.fill(option)
    tab.get_by_role("option", name=option, exact=True).click()
    _idle(tab)


def _type(tab, label: str, text: str) -> None:
    field = tab.get_by_role("textbox", name=label, exact=True)
    field.fill(text)
    field.press("Enter")
    _idle(tab)


def _download(tab, button: str) -> Path:
    """Click a download button and return the file. Chromium cancels a download whose media URL a
    concurrent Streamlit rerun has just replaced; a canceled try is clicked once more, as a user would."""

    def click() -> Path:
        with tab.expect_download() as download:
            tab.get_by_role("button", name=button).click()
        return Path(download.value.path())

    try:
        return click()
    except playwright.Error as error:
        if "canceled" not in str(error):
            raise
    _idle(tab)
    return click()


def test_design_run_and_read_the_lung_study_in_a_browser(page, dashboard):
    _page(page, "Sites")
    page.get_by_role("button", name="Create the demo hospitals (NCCTG lung cancer, 5 sites)").click()
    page.get_by_text("hospital-5").first.wait_for(state="attached", timeout=120_000)  # a cell of the sites table
    _shot(page, "sites-created")

    _page(page, "Study designer")
    _type(page, "Study id", "lung-dashboard")
    _type(page, "Title", "Survival in advanced lung cancer")
    _select(page, "Add an analysis", "kaplan_meier")
    page.get_by_role("textbox", name="Analysis id", exact=True).fill("km_sex")
    _select(page, "duration", "time")
    _select(page, "event", "status")
    _select(page, "group", "sex")
    page.get_by_role("button", name="Add analysis").click()
    page.get_by_text("km_sex · kaplan_meier").wait_for()
    page.get_by_text("km_sex groups by 'sex': declare the values 'sex' may take").wait_for()
    _select(page, "Declare the values of", "sex")
    _type(page, "Values (comma-separated)", "1, 2")
    page.get_by_role("button", name="Declare values").click()
    page.get_by_role("button", name="Remove").first.wait_for()  # the declared column, listed with its values
    _idle(page)
    _select(page, "Add an analysis", "cox")
    page.get_by_role("textbox", name="Analysis id", exact=True).fill("cox")
    _select(page, "duration", "time")
    _select(page, "event", "status")
    for covariate in ("age", "sex"):
        _select(page, "covariates", covariate)
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Add analysis").click()
    page.get_by_text("cox · cox").wait_for()
    page.get_by_text("Valid protocol · SHA-256").wait_for()
    _idle(page)
    protocol = tomllib.loads(_download(page, "Download protocol.toml").read_text())
    assert [a["id"] for a in protocol["analysis"]] == ["km_sex", "cox"]
    assert protocol["analysis"][1]["covariates"] == ["age", "sex"]
    assert protocol["variables"] == {"sex": {"levels": [1, 2]}}
    assert len(protocol["federation"]["sites"]) == 5
    _shot(page, "designer")

    _page(page, "Sites")
    page.get_by_role("button", name="Approve at the selected sites (as their stewards)").click()
    _idle(page)
    _shot(page, "sites-approved")

    _page(page, "Run")
    page.get_by_role("button", name="Check (dry run)").click()
    page.get_by_text("Dry run: every chosen site will compute every analysis and training.").wait_for(timeout=180_000)
    page.get_by_text("will compute", exact=True).first.wait_for(state="attached")  # a cell of the verdicts table
    _shot(page, "dry-run")
    page.get_by_role("button", name="Run on the embedded simulation").click()
    page.get_by_text("Finished: see Results.").wait_for(timeout=240_000)
    _shot(page, "run")

    _page(page, "Results")
    page.get_by_role("heading", name="km_sex · kaplan_meier").wait_for()
    page.get_by_role("heading", name="cox · cox").wait_for()
    page.locator('[data-testid="stImage"] img').nth(1).wait_for()  # the KM curves and the forest plot
    page.get_by_text("ties = efron").wait_for()
    assert page.locator('[data-testid="stDataFrame"]').count() >= 3
    _shot(page, "results")

    _page(page, "Audit")
    page.get_by_text("chain intact").wait_for()
    _shot(page, "audit")
    _page(page, "Ethics export")
    page.get_by_role("button", name="Generate the ethics-review pack").click()
    page.get_by_role("button", name="Download ethics.pdf").wait_for(timeout=120_000)
    document = page.frame_locator("iframe").first
    document.get_by_role("heading", name="4. What leaves each site").wait_for()
    _shot(page, "ethics")
