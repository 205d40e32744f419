"""End to end through the real Flower simulation engine and the `workbench` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test
from statsmodels.duration.hazard_regression import PHReg

from analyses import registry
from analyses.disclosure import Limits
from analyses.driver import in_memory, run
from hospital_node.audit import AuditLog
from tests.test_ethics import validate
from workbench import models
from workbench import protocol as protocol_module
from workbench.datasets import lung_hospitals
from workbench.results import json_safe
from workbench.training_spec import MANIFEST as TRAINING_MANIFEST


def workbench(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workbench.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    done = workbench("demo", "--out", out)
    assert done.returncode == 0, done.stderr
    (out / "demo.log").write_text(done.stderr)
    return out, json.loads((out / "results.json").read_text())


def test_demo_writes_the_results_contract(demo):
    out, results = demo
    assert results["protocol_sha256"] == protocol_module.load(out / "protocol.toml").sha256
    assert [s["id"] for s in results["sites"]] == [f"hospital-{k}" for k in range(1, 6)]
    assert results["refusals"] == []
    assert results["secure_aggregation"]["thresholds"] == "cross-site totals"
    assert results["secure_aggregation"]["min_count"] == 5  # the default policy
    for site in results["sites"]:
        assert site["usage"]["queries"] == results["rounds"] + 1 and site["usage"]["refusals"] == 0  # + key round
        assert site["rows"] is None and "rows" not in site["usage"] and len(site["audit_head"]) == 64
    analyses = results["analyses"]
    assert set(analyses) == set(protocol_module.load(out / "protocol.toml").analyses)
    for result in analyses.values():
        assert {"type", "n", "n_dropped"} <= set(result) and "error" not in result
    for key in ("coef", "exp_coef", "se", "z", "p", "ci_lower", "ci_upper"):
        assert key in analyses["cox"]["params"]["age"]
    assert set(analyses["logit"]["params"]) == {"Intercept", "age", "sex"}
    assert set(analyses["km_sex"]["groups"]["1"]) >= {
        "time",
        "survival",
        "ci_lower",
        "ci_upper",
        "at_risk",
        "events",
        "median",
    }
    assert {"statistic", "df", "p"} <= set(analyses["logrank_sex"])
    assert set(analyses["baseline"]["variables"]["age"]) >= {"n", "missing", "mean", "sd"}
    assert set(analyses["baseline"]["variables"]["age"]["quantiles"]) == {"0.25", "0.5", "0.75"}
    assert results["rounds"] <= 14  # independent analyses share rounds: the longest (weighted Cox: two models) + 1


def test_demo_trains_both_models_with_dp_through_flower(demo):
    out, results = demo
    lesion, death = results["training"]["lesion"], results["training"]["death"]
    assert [r["round"] for r in lesion["rounds"]] == [1, 2, 3, 4, 5] and lesion["refusals"] == []
    assert set(lesion["epsilon"]) == {f"hospital-{k}" for k in range(1, 6)}
    assert all(3.9 < eps <= 4.0 for eps in lesion["epsilon"].values())  # each site spends exactly its target
    assert all(2.9 < eps <= 3.0 for eps in death["epsilon"].values())
    assert lesion["skipped_images"]["hospital-2"] == {"truncated pixel data": 1}
    assert lesion["final_metrics"]["auc"] >= 0.85  # the demo's model visibly learns at ε = 4
    line = next(line for line in (out / "demo.log").read_text().splitlines() if "without DP noise" in line)
    assert f"{lesion['final_metrics']['auc']:.3f}; the same federated training" in line
    assert float(line.rsplit(": ", 1)[1]) >= 0.85  # non-private, printed beside it
    for training_id, architecture, features in (("lesion", "maxpool_cnn", 0), ("death", "logistic", 5)):
        state = torch.load(out / "models" / training_id / "final.pt")
        models.build(architecture, features).load_state_dict(state)  # the model's own names, no Opacus prefixes
        assert (out / "models" / training_id / "model_card.md").read_text().startswith(f"# Model card: {training_id}")
    privacy = workbench("node", "privacy", "--site", out / "sites" / "hospital-1")
    assert "hospital-1: ε spent 6.9" in privacy.stdout and "of max_epsilon 8" in privacy.stdout


def _demo_frames(study: protocol_module.Protocol) -> dict[str, pd.DataFrame]:
    """The demo hospitals' study population: the rows with a value in every variable the analyses read."""
    columns = study.population(next(iter(study.analyses.values())))
    return {site: rows.dropna(subset=columns) for site, (_, rows) in lung_hospitals().items()}


def test_flower_results_equal_pooled_references_at_exact_days(demo):
    out, results = demo
    analyses = results["analyses"]
    lung = pd.concat(_demo_frames(protocol_module.load(out / "protocol.toml")).values())
    assert len(lung) == 212 and results["secure_aggregation"]["mode"] == "masked"
    ref = PHReg(lung.time, lung[["age", "sex", "ph.ecog"]], status=lung.status, ties="efron").fit(tol=1e-12)
    got = [analyses["cox"]["params"][k]["coef"] for k in ("age", "sex", "ph.ecog")]
    np.testing.assert_allclose(got, ref.params, rtol=0, atol=1e-10)
    women = lung[lung.sex == 2]
    km = KaplanMeierFitter().fit(women.time, women.status)
    np.testing.assert_array_equal(analyses["km_sex"]["groups"]["2"]["time"], km.timeline)
    np.testing.assert_allclose(
        analyses["km_sex"]["groups"]["2"]["survival"], km.survival_function_.iloc[:, 0], atol=1e-12
    )
    men = lung[lung.sex == 1]
    lr = logrank_test(men.time, women.time, men.status, women.status)
    assert analyses["logrank_sex"]["statistic"] == pytest.approx(lr.test_statistic, abs=1e-10)
    assert analyses["baseline"]["variables"]["wt.loss"]["sd"] == pytest.approx(lung["wt.loss"].std(), abs=1e-12)
    table = analyses["ecog_by_sex"]["table"]
    assert table[0][3] == "1-4" and "chi2" not in analyses["ecog_by_sex"]  # one patient with ECOG 3: a range


def test_flower_adds_no_error_to_the_in_memory_federation(demo):
    out, results = demo
    study = protocol_module.load(out / "protocol.toml")
    plans = {key: registry.plan(spec, study.levels) for key, spec in study.analyses.items()}
    cohorts = {site: rows for site, (_, rows) in lung_hospitals().items()}
    population = {key: study.population(spec) for key, spec in study.analyses.items()}
    expected = run(plans, in_memory(cohorts, study.analyses, Limits(), masked=True, population=population))
    published = {"ecog_by_sex": results["analyses"]["ecog_by_sex"]}  # small totals are ranges in the study only
    assert {**results["analyses"], **published} == json.loads(json.dumps(json_safe({**expected, **published})))


def test_site_order_does_not_change_a_single_bit(demo, tmp_path):
    out, results = demo
    sites = sorted((out / "sites").iterdir(), reverse=True)
    command = [sys.executable, "-m", "workbench.cli", "run", out / "protocol.toml",
               *[arg for site in sites for arg in ("--site", site)], "--out", tmp_path / "reversed"]  # fmt: skip
    # In a session of its own: the command ends with every process it started (Ray's) stopped.
    with subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:  # fmt: skip
        stdout, stderr = process.communicate(timeout=300)
    # (A killed process's exit status may wait a moment for init to collect it: it no longer runs.)
    running = psutil.process_iter(["pid", "name", "status"])
    left = [p.info for p in running if _session(p.pid) == process.pid and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert left == [], left
    assert "== km_sex" in stdout and "results: " in stderr and "Traceback" not in stderr
    assert "DEPRECATED" not in stderr  # Flower's chatter stays off the researcher's terminal
    rerun = json.loads((tmp_path / "reversed" / "results.json").read_text())
    assert rerun["analyses"] == results["analyses"]
    # The models were trained already: each site's ledger remembers, so the same training is not paid twice.
    assert process.returncode == 1
    for training in rerun["training"].values():
        assert "would bring the training's ε to" in training["error"] and "budget for it is spent" in training["error"]


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _assert_refused(done: subprocess.CompletedProcess[str], out: Path, *needles: str) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    for needle in needles:
        assert needle in last
    assert not out.exists(), "nothing may be written when a study is refused"
    return last


def test_broken_site_data_is_reported_per_site_and_nothing_is_written(demo, tmp_path):
    out, _ = demo
    sites = tmp_path / "sites"
    shutil.copytree(out / "sites", sites)
    (sites / "hospital-1" / "patients.csv").unlink()
    (sites / "hospital-2" / "patients.csv").write_text("time,status,age,sex,ph.ecog\n")
    lines = (sites / "hospital-3" / "patients.csv").read_text().splitlines()
    cells = lines[4].split(",")
    cells[2] = "sixty"
    lines[4] = ",".join(cells)
    (sites / "hospital-3" / "patients.csv").write_text("\n".join(lines) + "\n")
    lines = (sites / "hospital-4" / "patients.csv").read_text().splitlines()
    lines[6] += ",1,2"
    (sites / "hospital-4" / "patients.csv").write_text("\n".join(lines) + "\n")
    lines = (sites / "hospital-5" / "patients.csv").read_text().splitlines()
    lines[3] = ",".join(lines[3].split(",")[:8])  # what a truncated export leaves
    (sites / "hospital-5" / "patients.csv").write_text("\n".join(lines) + "\n")
    result = tmp_path / "result"
    done = workbench("run", out / "protocol.toml", *[a for s in sorted(sites.iterdir()) for a in ("--site", s)],
                     "--out", result)  # fmt: skip
    _assert_refused(
        done,
        result,
        "site hospital-1: ",
        "no patients.csv or patients.parquet",
        "site hospital-2: patients.csv has no rows",
        "site hospital-3: patients.csv: ",
        "column 'age' mixes numbers and text ('sixty' at line 5)",
        "site hospital-4: patients.csv is not a well-formed CSV file (Expected 10 fields in line 7, saw 12)",
        "site hospital-5: patients.csv is not a well-formed CSV file (line 4: 8 fields, the header has 10; "
        "a truncated export?)",
    )


def test_unapproved_protocol_is_refused_by_every_site(demo, tmp_path):
    out, _ = demo
    protocol = tmp_path / "changed.toml"
    protocol.write_text((out / "protocol.toml").read_text().replace('"Survival in', '"Survival (v2) in'))
    sites = [a for s in sorted((out / "sites").iterdir())[:2] for a in ("--site", s)]
    done = workbench("run", protocol, *sites, "--out", tmp_path / "result", "--quiet")
    _assert_refused(done, tmp_path / "result", "site hospital-1, hospital-2: protocol ",
                    "is not approved at this site", "workbench node approve PROTOCOL --site")  # fmt: skip


def test_unknown_column_names_the_analysis_and_suggests_the_fix(demo, tmp_path):
    out, _ = demo
    protocol = tmp_path / "typo.toml"
    text = (out / "protocol.toml").read_text()
    protocol.write_text(text.replace('variables = ["age", "wt.loss"]', 'variables = ["agee"]'))
    folders = sorted((out / "sites").iterdir())[:3]
    for folder in folders:
        approved = workbench("node", "approve", protocol, "--site", folder, "--yes", "--by", "test steward")
        assert approved.returncode == 0, approved.stderr
        assert "Analysis 'baseline' (describe) reads: agee\n" in approved.stdout
    sites = [a for s in folders for a in ("--site", s)]
    done = workbench("run", protocol, *sites, "--out", tmp_path / "result", "--quiet")
    _assert_refused(done, tmp_path / "result", "site hospital-1, hospital-2, hospital-3: patients.csv: analysis 'baseline': "
                    "column 'agee' is not in the cohort table (did you mean 'age'?)")  # fmt: skip


@pytest.mark.parametrize(
    "text, needle",
    [
        ('[study]\nid = "x"\ntitle = "t"\n[[analysis]\n', "not valid TOML"),
        ('[study]\nid = "x"\ntitle = "t"\n[[analysis]]\nid = "a"\ntype = "kaplan_meyer"\n',
         "analysis #1 (id 'a'): unknown type 'kaplan_meyer' (did you mean 'kaplan_meier'?)"),
        ('[study]\nid = "x"\ntitle = "t"\n[[analysis]]\nid = "a"\ntype = "describe"\nvariable = ["age"]\n',
         "analysis #1 (id 'a'): unknown field 'variable' (did you mean 'variables'?)"),
    ],
)  # fmt: skip
def test_bad_protocol_is_refused_before_anything_starts(demo, tmp_path, text, needle):
    out, _ = demo
    protocol = tmp_path / "bad.toml"
    protocol.write_text(text)
    done = workbench("run", protocol, "--site", out / "sites" / "hospital-1", "--out", tmp_path / "result")
    assert _assert_refused(done, tmp_path / "result", needle).startswith("error: bad.toml: ")


def test_missing_site_folder_is_refused(demo, tmp_path):
    out, _ = demo
    done = workbench("run", out / "protocol.toml", "--site", tmp_path / "nowhere", "--out", tmp_path / "result")
    _assert_refused(done, tmp_path / "result", "nowhere: site folder not found")


def test_ethics_export_of_the_run_agrees_with_the_sites_audit_logs(demo, tmp_path):
    out, results = demo
    sites = sorted((out / "sites").iterdir())
    done = workbench("export", "ethics", out / "protocol.toml", *[a for s in sites for a in ("--site", s)],
                     "--run", out, "--out", tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "ethics.json").read_text(encoding="utf-8"))
    validate(document)
    assert document["stage"] == "completed" and document["run"]["rounds"] == results["rounds"]
    reported = {site["id"]: site["audit_head"] for site in results["sites"]}
    for site, audit in zip(sites, document["audit"]["sites"], strict=True):
        verified = workbench("node", "audit", "verify", "--site", site)
        assert verified.returncode == 0
        assert f"{audit['id']}: audit log intact: {audit['entries']} entries, head {audit['head']}" in verified.stdout
        assert audit["ok"] and audit["run_head"] == reported[audit["id"]] and audit["run_head_entry"] >= 1
        assert results["protocol_sha256"] in [a["sha256"] for a in audit["approvals"]]
    ledger = {s["id"]: s["epsilon_spent_by_study"] for s in document["privacy"]["sites"]}
    spent = {t["id"]: t["spent"] for t in document["privacy"]["trainings"]}
    for site_id, total in ledger.items():
        assert total == pytest.approx(spent["lesion"][site_id] + spent["death"][site_id], abs=1e-9)
    assert all(site["identity_matches"] and site["approval"] for site in document["sites"])
    html = (tmp_path / "ethics.html").read_text(encoding="utf-8")
    assert html.count("entry ") >= len(sites) and "BROKEN" not in html


def test_the_training_manifest_names_what_the_nodes_released(demo):
    out, results = demo
    declared = {(i.phase, i.key) for i in TRAINING_MANIFEST}
    for entry in AuditLog(out / "sites" / "hospital-1" / "state").entries():
        if entry["event"] == "release" and entry["phase"] == "evaluate":
            assert {("evaluate", key) for key in entry["metrics"]} <= declared
        if entry["event"] == "release" and entry["phase"] == "train":
            architecture, features = ("maxpool_cnn", 0) if entry["analysis"] == "lesion" else ("logistic", 5)
            assert [i["name"] for i in entry["items"]] == list(models.build(architecture, features).state_dict())
