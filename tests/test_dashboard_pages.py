"""Each dashboard page's logic with Streamlit's AppTest (the browser test covers the whole flow)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from hospital_node.audit import AuditLog
from hospital_node.site import open_site
from ui.roles import Role
from workbench import api, demo
from workbench.errors import UserError

UI = Path(__file__).resolve().parents[1] / "ui"
DESCRIBE_AGE = '[study]\nid = "s"\ntitle = "t"\n[[analysis]]\nid = "d"\ntype = "describe"\nvariables = ["age"]\n'


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
    test = AppTest.from_file(str(UI / "screens" / f"{name}.py"), default_timeout=60)
    for key, value in state.items():
        test.session_state[key] = value
    return test.run()


def _add(page: AppTest, kind: str, identifier: str, texts: dict[str, str] | None = None, **fields) -> None:
    page.selectbox(key="new-analysis-type").set_value(kind).run()
    page.text_input(key="new-analysis-id").set_value(identifier)
    for name, value in (texts or {}).items():
        page.text_input(key=f"new-{kind}-{name}").set_value(value)
    for name, value in fields.items():
        (page.multiselect if isinstance(value, list) else page.selectbox)(key=f"new-{kind}-{name}").set_value(value)
    next(b for b in page.button if b.label == "Add analysis").click().run()


def _declare(page: AppTest, column: str, values: str) -> None:
    page.selectbox(key="variable-column").set_value(column).run()
    page.text_input(key=f"levels-{column}").set_value(values)
    next(b for b in page.button if b.label == "Declare values").click().run()


def test_the_designer_builds_a_valid_protocol_and_shows_what_leaves(workspace):
    demo.build_sites(workspace / "sites")
    page = _page("designer")
    page.text_input[0].set_value("lung").run()
    title = next(t for t in page.text_input if t.label == "Title")
    title.set_value("Survival").run()
    _add(page, "kaplan_meier", "km", duration="time", event="status", group="sex")
    # grouping by an undeclared column: said where the values are declared, and by the schema
    assert page.warning[0].value.startswith("km groups by 'sex': declare the values 'sex' may take")
    assert "analysis 'km' groups by 'sex': declare the values it may take in [variables]" in page.error[0].value
    _declare(page, "sex", "1, 1")
    assert page.error[0].value == "sex: a level is listed twice"
    _declare(page, "sex", "1, 2")
    _add(page, "cox", "cox", duration="time", event="status", covariates=["age", "sex"], ties="breslow")
    _add(page, "describe", "table1", variables=["age"])  # its quantiles field shows "0.25, 0.5, 0.75"
    _add(page, "ipw_cox", "weighted", {"arms": "1, 2"}, duration="time", event="status", treatment="sex",
         confounders=["age"])
    next(s for s in page.selectbox if s.label == "Missing values").set_value("per_analysis").run()
    assert not page.exception and not page.error and not page.warning
    assert page.success[0].value.startswith("Valid protocol · SHA-256 ")
    text = (workspace / "draft.toml").read_text()  # saved: survives page switches and restarts
    sections = [line for line in text.splitlines() if line.startswith("[")]
    assert sections[:4] == ["[study]", "[cohort]", "[variables.sex]", "[privacy]"]
    protocol = api.draft_of(text)
    assert protocol["variables"] == {"sex": {"levels": [1, 2]}}
    assert [type(level) for level in protocol["variables"]["sex"]["levels"]] == [int, int]  # 1, 2 — not 1.0, 2.0
    assert protocol["cohort"]["missing"] == "per_analysis"
    assert protocol["analysis"][1] == {"id": "cox", "type": "cox", "alpha": 0.05, "duration": "time", "event": "status",
                                       "covariates": ["age", "sex"], "ties": "breslow", "penalizer": 0.0}  # fmt: skip
    assert protocol["analysis"][2]["quantiles"] == [0.25, 0.5, 0.75]
    assert protocol["analysis"][3]["arms"] == [1, 2] and protocol["analysis"][3]["confounders"] == ["age"]
    assert len(protocol["federation"]["sites"]) == 5
    assert any("cox: per round, what a site sends" in e.label for e in page.expander)
    rules = "\n".join("\n".join(frame.value["rule"]) for frame in page.dataframe if "rule" in frame.value)
    assert "masked; the cross-site total must be 0 or ≥ k, else nothing is published" in rules  # the study is masked
    assert "sent in the clear (numeric or text; the only item never masked)" in rules


def test_declared_values_are_numbers_only_when_all_are(workspace):
    demo.build_sites(workspace / "sites")
    page = _page("designer")
    _declare(page, "ph.ecog", "0, 1, 2.5")
    _declare(page, "sex", "male, 2")
    declared = api.draft_of((workspace / "draft.toml").read_text())["variables"]
    assert declared == {"ph.ecog": {"levels": [0, 1, 2.5]}, "sex": {"levels": ["male", "2"]}}
    assert [type(level) for level in declared["ph.ecog"]["levels"]] == [int, int, float]
    page.selectbox(key="variable-column").set_value("ph.ecog").run()
    assert page.text_input(key="levels-ph.ecog").value == "0, 1, 2.5"  # a declaration is edited where it was made
    next(b for b in page.button if b.key == "remove-variable-sex").click().run()
    assert list(api.draft_of((workspace / "draft.toml").read_text())["variables"]) == ["ph.ecog"]


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
    (workspace / "draft.toml").write_text(DESCRIBE_AGE + demo.roster(api.site_folders(workspace)))
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
    (workspace / "draft.toml").write_text(DESCRIBE_AGE + demo.roster(api.site_folders(workspace)))
    page = _page("run", run=str(run))
    assert any("round 2 — counts: km" in m.value for m in page.markdown) and page.info[-1].value == "Running…"
    (run / "log.txt").write_text("error: site hospital-1: protocol 1234 is not approved at this site\n")
    (run / "status.json").write_text(json.dumps({"exit_code": 2}))
    page = _page("run", run=str(run))
    assert page.error[-1].value == "The study did not run: site hospital-1: protocol 1234 is not approved at this site"
    run_button = next(b for b in page.button if b.label == "Run on the embedded simulation")
    assert run_button.disabled  # no site has approved the draft: none is selected, nothing can start


def test_the_dry_run_shows_per_analysis_and_site_what_would_compute(workspace):
    """The real `workbench check` (Flower simulation in a subprocess) at four approved sites and one that is not."""
    folders = demo.build_sites(workspace / "sites")
    text = api.protocol_text(api.draft_of(demo.protocol_text() + demo.roster(folders)))  # as the designer saves it
    (workspace / "draft.toml").write_text(text, encoding="utf-8")
    protocol = api.check(text)[0]
    for folder in folders[:4]:
        api.approve(folder, protocol, by="test")
    page = _page("run")
    page.multiselect[0].select("hospital-5").run()
    started = time.monotonic()
    next(b for b in page.button if b.label == "Check (dry run)").click().run(timeout=180)
    assert not page.exception and time.monotonic() - started < 120
    verdicts = next(frame.value for frame in page.dataframe if frame.value.index.name == "analysis")
    assert list(verdicts.columns) == [f"hospital-{k}" for k in range(1, 6)]
    assert list(verdicts.index) == [*protocol.analyses, *protocol.trainings] and "km_sex" in verdicts.index
    assert (verdicts.iloc[:, :4] == "will compute").all().all()
    assert verdicts["hospital-5"].str.contains("is not approved at this site").all()
    assert page.error[0].value.startswith(f"hospital-5 would answer nothing: protocol {protocol.sha256[:12]}")
    assert page.warning[-1].value.startswith("Dry run: 1 site(s) would answer nothing and 0 analysis verdict(s)")
    entries = AuditLog(open_site(folders[0]).state).entries()
    assert entries[-1]["event"] == "check"  # the site logged the check; nothing was released
    page.multiselect[0].unselect("hospital-5").run()  # other sites: the verdicts shown are no longer this choice's
    assert not any(frame.value.index.name == "analysis" for frame in page.dataframe)


def test_a_dry_run_that_cannot_start_says_why(tmp_path):
    protocol = api.check(demo.protocol_text() + "\n[privacy]\nsecure_aggregation = false\n")[0]
    with pytest.raises(UserError, match="site folder not found"):
        api.dry_run(protocol, [tmp_path / "nowhere"])


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
    sites = page.dataframe[0].value
    assert sites["site"].tolist() == [f"hospital-{k}" for k in range(1, 6)]  # per-site breakdown
    assert "rows" not in sites  # under secure aggregation a site's cohort size stays at the site
    assert any("secure aggregation: masked · minimum count 5 on cross-site totals" in m.value for m in page.markdown)
    at_risk = next(frame.value for frame in page.dataframe if frame.value.index.name == "number at risk / time")
    cells = at_risk.to_numpy().ravel().tolist()
    assert "<5" in cells and not {"1", "2", "3", "4"} & set(cells)  # small numbers at risk, for every role
    crosstab = next(frame.value for frame in page.dataframe if "ph.ecog" in str(frame.value.columns.name))
    assert crosstab.map(lambda v: bool(re.fullmatch(r"\d+-\d+", v))).any().any()  # published ranges, as ranges
    labels = [b.label for b in page.get("download_button")]
    assert labels.count("PNG") == labels.count("SVG") >= 5 and "CSV" in labels


def test_a_viewer_sees_coarse_results_only(workspace, demo_run):
    _results_workspace(workspace, demo_run)
    page = _page("results", role=Role("viewer", min_count=5))
    assert not page.exception
    shown = "\n".join(str(frame.value) for frame in page.dataframe)
    assert "hospital-1" not in shown  # no per-site breakdown
    crosstab = next(frame.value for frame in page.dataframe if "ph.ecog" in str(frame.value.columns.name))
    assert (crosstab == "<5").any().any()  # a range below the minimum is hidden
    assert crosstab.map(lambda v: bool(re.fullmatch(r"\d+-\d+", v)) and int(v.split("-")[0]) >= 5).any().any()
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
    folders = demo.build_sites(workspace / "sites")
    (workspace / "draft.toml").write_text(demo.protocol_text() + demo.roster(folders), encoding="utf-8")
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
