"""Each dashboard page's logic with Streamlit's AppTest (the browser test covers the whole flow)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from hospital_node.audit import AuditLog
from hospital_node.site import open_site
from ui.roles import Role
from workbench import api, demo

UI = Path(__file__).resolve().parents[1] / "ui"


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A finished demo study (statistics and both models), as a dashboard run folder."""
    out = tmp_path_factory.mktemp("demo") / "out"
    done = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "demo", "--out", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return out


def _page(name: str, **state) -> AppTest:
    test = AppTest.from_file(str(UI / "pages" / f"{name}.py"), default_timeout=60)
    for key, value in state.items():
        test.session_state[key] = value
    return test.run()


def test_the_designer_builds_a_valid_protocol_and_shows_what_leaves(workspace):
    demo.build_sites(workspace / "sites")
    page = _page("designer")
    page.text_input[0].set_value("lung").run()
    title = next(t for t in page.text_input if t.label == "Title")
    title.set_value("Survival").run()
    page.selectbox(key="new-analysis-type").set_value("cox").run()
    page.text_input(key="new-analysis-id").set_value("cox")
    page.selectbox(key="new-cox-duration").set_value("time")
    page.selectbox(key="new-cox-event").set_value("status")
    page.multiselect(key="new-cox-covariates").set_value(["age", "sex"])
    page.selectbox(key="new-cox-ties").set_value("breslow")
    next(b for b in page.button if b.label == "Add analysis").click().run()
    assert not page.exception and not page.error
    assert page.success[0].value.startswith("Valid protocol · SHA-256 ")
    protocol = api.draft_of((workspace / "draft.toml").read_text())  # saved: survives page switches and restarts
    assert protocol["analysis"] == [{"id": "cox", "type": "cox", "alpha": 0.05, "duration": "time", "event": "status",
                                     "covariates": ["age", "sex"], "ties": "breslow", "penalizer": 0.0}]  # fmt: skip
    assert len(protocol["federation"]["sites"]) == 5
    assert any("cox: per round, what a site sends" in e.label for e in page.expander)


def test_the_designer_refuses_an_invalid_block_with_the_schema_message(workspace):
    page = _page("designer")
    page.selectbox(key="new-analysis-type").set_value("kaplan_meier").run()
    page.text_input(key="new-analysis-id").set_value("km")
    next(b for b in page.button if b.label == "Add analysis").click().run()
    assert "duration: Field required" in page.error[0].value
    assert api.draft_of((workspace / "draft.toml").read_text()).get("analysis", []) == []


def test_sites_lists_policies_approvals_and_budgets_and_approves(workspace):
    page = _page("sites")
    assert any(b.label.startswith("Create the demo hospitals") for b in page.button)
    demo.build_sites(workspace / "sites")
    (workspace / "draft.toml").write_text('[study]\nid = "s"\ntitle = "t"\n[[analysis]]\nid = "d"\ntype = "describe"\n'
                                          'variables = ["age"]\n' + demo.roster(api.site_folders(workspace)))  # fmt: skip
    page = _page("sites")
    table = page.dataframe[0].value
    assert list(table["site"]) == [f"hospital-{k}" for k in range(1, 6)] and not table["approved"].any()
    assert list(table["ε remaining"]) == [8.0] * 5 and list(table["audit"]) == ["intact"] * 5
    next(b for b in page.button if b.label.startswith("Approve at the selected sites")).click().run()
    assert _page("sites").dataframe[0].value["approved"].all()


def test_run_shows_progress_refusals_and_the_outcome(workspace):
    run = workspace / "runs" / "20260101-000000-000000"
    run.mkdir(parents=True)
    (run / "log.txt").write_text("[   0.1s] round  1  discover: km\n[   5.0s] round  2  counts: km\n")
    demo.build_sites(workspace / "sites")
    (workspace / "draft.toml").write_text('[study]\nid = "s"\ntitle = "t"\n[[analysis]]\nid = "d"\ntype = "describe"\n'
                                          'variables = ["age"]\n')  # fmt: skip
    page = _page("run", run=str(run))
    assert any("round 2 — counts: km" in m.value for m in page.markdown) and page.info[-1].value == "Running…"
    (run / "log.txt").write_text("error: site hospital-1: protocol 1234 is not approved at this site\n")
    (run / "status.json").write_text(json.dumps({"exit_code": 2}))
    page = _page("run", run=str(run))
    assert page.error[-1].value == "The study did not run: site hospital-1: protocol 1234 is not approved at this site"
    run_button = next(b for b in page.button if b.label == "Run on the embedded simulation")
    assert run_button.disabled  # no site has approved the draft: none is selected, nothing can start


def _results_workspace(workspace: Path, demo_run: Path) -> Path:
    """The demo run as the dashboard's run folder (protocol.toml, job.json, out/)."""
    run = workspace / "runs" / "20260101-000000-000000"
    shutil.copytree(demo_run, run / "out")
    shutil.copy(demo_run / "protocol.toml", run / "protocol.toml")
    sites = [a for folder in sorted((run / "out" / "sites").iterdir()) for a in ("--site", str(folder))]
    (run / "job.json").write_text(json.dumps({"arguments": ["run", str(run / "protocol.toml"), *sites]}))
    return run


def test_results_render_every_analysis_and_model_for_a_researcher(workspace, demo_run):
    _results_workspace(workspace, demo_run)
    page = _page("results", role=Role("researcher"))
    assert not page.exception
    headings = [h.value for h in page.subheader]
    assert (
        "km_sex · kaplan_meier" in headings
        and "cox · cox" in headings
        and "model lesion · image_classification" in headings
    )
    assert page.dataframe[0].value["site"].tolist() == [f"hospital-{k}" for k in range(1, 6)]  # per-site breakdown
    labels = [b.label for b in page.get("download_button")]
    assert labels.count("PNG") == labels.count("SVG") >= 5 and "CSV" in labels


def test_a_viewer_sees_coarse_results_only(workspace, demo_run):
    _results_workspace(workspace, demo_run)
    page = _page("results", role=Role("viewer", min_count=5))
    assert not page.exception
    shown = "\n".join(str(frame.value) for frame in page.dataframe)
    assert "hospital-1" not in shown  # no per-site breakdown
    crosstab = next(frame.value for frame in page.dataframe if "ph.ecog" in str(frame.value.columns.name))
    assert (crosstab == "<5").any().any()  # the one-patient cell is hidden, not shown as a range
    assert not any("hospital" in w.value for w in page.warning)


def test_the_viewer_role_shows_only_results(workspace, tmp_path, monkeypatch):
    roles = tmp_path / "roles.toml"
    roles.write_text('[default]\nrole = "viewer"\n')
    monkeypatch.setenv("WORKBENCH_ROLES", str(roles))
    app = AppTest.from_file(str(UI / "app.py"), default_timeout=60).run()
    assert not app.exception
    assert app.session_state["role"].viewer
    assert "viewer" in app.sidebar.caption[0].value


def test_audit_verifies_each_chain_and_searches_its_entries(workspace):
    folder = demo.build_sites(workspace / "sites")[0]
    log = AuditLog(open_site(folder).state)
    log.append("approve", protocol_sha256="a" * 64, study="first", title="t", by="steward", analyses={})
    log.append("refusal", protocol_sha256="b" * 64, study="second", round=1, reason="not approved")
    page = _page("audit")
    assert page.success[0].value.startswith("hospital-1: chain intact, 2 entries")
    page.text_input(key="audit-search").set_value("second").run()
    assert len(page.dataframe[0].value) == 1 and page.caption[-1].value == "1 of 2 entries"
    lines = log.path.read_text().splitlines()
    log.path.write_text(lines[0].replace("steward", "somebody") + "\n" + lines[1] + "\n")
    assert "chain BROKEN — entry 1 (line 1) does not match its hash" in _page("audit").error[0].value


def test_the_ethics_pack_of_the_draft_and_of_a_run(workspace, demo_run):
    (workspace / "draft.toml").write_text(demo.protocol_text(), encoding="utf-8")
    page = _page("ethics")
    assert not page.exception and not page.error
    page.button[0].click().run()
    assert not page.exception and page.success[0].value.startswith("Generated ")
    assert [b.label for b in page.get("download_button")] == [
        "Download ethics.pdf",
        "Download ethics.html",
        "Download ethics.json",
    ]
    assert (workspace / "ethics" / "draft" / "ethics.pdf").stat().st_size > 50_000
    run = _results_workspace(workspace, demo_run)
    page.run()
    page.selectbox[0].select(run).run()
    assert not page.success  # this run has no pack yet
    page.button[0].click().run()
    assert not page.exception and page.success
    document = json.loads((run / "ethics" / "ethics.json").read_text())
    assert document["stage"] == "completed" and all(site["ok"] for site in document["audit"]["sites"])
