"""OMOP CDM sites: the node's cohort equals an independent pandas reference; the Eunomia study, federated over
4 hospital databases, equals pooled lifelines / statsmodels / scipy on that reference; a PostgreSQL hospital
(real server) gives bit-identical results; bad databases and protocols end with a clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import logrank_test
from scipy import stats
from statsmodels.duration.hazard_regression import PHReg

from hospital_node import cdm, omop, steward
from hospital_node.site import SiteError, open_site
from tests.omop_reference import duckdb_tables, reference_cohort, tiny_cdm, tiny_cohort
from tests.postgres import create_role_and_database, load_cdm, start_postgres
from workbench import eunomia, protocol
from workbench.demo import omop_site
from workbench.omop_cohort import OmopCohort

EXAMPLE = (Path(__file__).resolve().parents[1] / "workbench" / "examples" / "eunomia-celecoxib.toml").read_text()
CLEAR = "\n[privacy]\nsecure_aggregation = false\n"
TIGHT = {"step_size": 1.0, "precision": 1e-12, "r_precision": 0.0}
PASSWORD = "s3cret-Pw-for-omop-2"


def example(**exposure: object) -> OmopCohort:
    cohort = protocol.parse(EXAMPLE + CLEAR).model.cohort.omop
    assert cohort is not None
    return cohort.model_copy(update={"exposure": cohort.exposure.model_copy(update=exposure)}) if exposure else cohort


def node_frame(folder: Path, cohort: OmopCohort) -> pd.DataFrame:
    """The node's materialised cohort with its person ids in front (as the reference lays it out)."""
    found = omop.materialise(open_site(folder), cohort)
    return pd.concat([pd.DataFrame({"person_id": found.person_ids}), found.rows.reset_index(drop=True)], axis=1)


@pytest.fixture(scope="module")
def eunomia_site(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("eunomia-site")
    shutil.copy(eunomia.eunomia_path(), folder / "cdm.duckdb")
    return omop_site(folder, 'url = "duckdb://cdm.duckdb"')


@pytest.fixture(scope="module")
def tables():
    return duckdb_tables(eunomia.eunomia_path())


@pytest.fixture(scope="module")
def pooled(tables) -> pd.DataFrame:
    """The study's per-person table built by the independent reference from the unsplit Eunomia."""
    return reference_cohort(tables, example())


@pytest.mark.parametrize(
    "variant",
    ["as written", "first exposure wins", "with a measurement and an age range", "no outcome"],
)
def test_node_cohort_equals_the_independent_reference_on_eunomia(eunomia_site, tables, variant):
    cohort = example(in_both="first") if variant == "first exposure wins" else example()
    if variant == "with a measurement and an age range":
        sets = {**cohort.concept_sets, "temperature": {"concepts": [3006322]}}
        covariates = [*cohort.covariates, {"column": "temp", "kind": "measurement", "concept_set": "temperature",
                                           "window": {"start": -365, "end": 0}}]  # fmt: skip
        cohort = OmopCohort.model_validate({**cohort.model_dump(), "concept_sets": sets, "covariates": covariates,
                                            "entry": {"prior_observation_days": 180, "min_age": 35, "max_age": 45}})  # fmt: skip
    if variant == "no outcome":
        cohort = OmopCohort.model_validate({**cohort.model_dump(), "outcome": None,
                                            "entry": {"prior_observation_days": 365}})  # fmt: skip
    expected = reference_cohort(tables, cohort)
    pd.testing.assert_frame_equal(node_frame(eunomia_site, cohort), expected)
    assert len(expected) > 1000


@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory) -> Path:
    """The reference's hand-made CDM (every rule) as a DuckDB database, with its vocabulary and CDM version."""
    folder = tmp_path_factory.mktemp("tiny-site")
    frames = tiny_cdm()
    concepts = sorted({int(c) for c in frames["concept_ancestor"].to_numpy().ravel()} | {12, 13, 21, 51})
    frames |= {"concept": pd.DataFrame({"concept_id": concepts}), "cdm_source": pd.DataFrame({"cdm_version": ["5.4"]})}
    with duckdb.connect(str(folder / "cdm.duckdb")) as db:
        for name, frame in frames.items():
            db.register("frame", frame)
            columns = ", ".join(f"CAST({c} AS DATE) AS {c}" if c.endswith("_date") else c for c in frame.columns)
            db.execute(f"CREATE TABLE {name} AS SELECT {columns} FROM frame")
            db.unregister("frame")
    return omop_site(folder, 'url = "duckdb://cdm.duckdb"')


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"exposure": {"in_both": "first"}},
        {"entry": {"no_prior_outcome": False}},
        {"entry": {"min_age": 18, "max_age": 60}},
        {"entry": {"prior_observation_days": 0}},
        {"outcome": {"concept_set": None, "domain": "death"}, "entry": {"no_prior_outcome": False}},
        {"outcome": None, "entry": {"no_prior_outcome": False}, "covariates": []},
    ],
    ids=["as written", "first", "prior outcome allowed", "ages", "no prior observation", "death", "no outcome"],
)
def test_node_cohort_equals_the_reference_on_every_rule(tiny_site, changes):
    cohort = tiny_cohort(**changes)
    tables = duckdb_tables(tiny_site / "cdm.duckdb")
    expected = reference_cohort(tables, cohort)
    pd.testing.assert_frame_equal(node_frame(tiny_site, cohort), expected)
    assert len(expected) >= 2


def test_node_reads_read_only(eunomia_site, tiny_site):
    with cdm.connect(open_site(eunomia_site)) as db, pytest.raises(Exception, match="(?i)read.only"):
        db.rows("CREATE TABLE main.written (a INTEGER)")


# --- the Eunomia study, federated (Flower simulation, 4 hospital databases, default policy, masked) ----------


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eunomia-demo")
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "demo", "eunomia", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_eunomia_split_keeps_every_person_once(demo, pooled):
    sites = sorted((demo / "sites").iterdir())
    cohorts = [omop.materialise(open_site(site), example()) for site in sites]
    ids = np.concatenate([c.person_ids for c in cohorts])
    assert sorted(ids) == list(pooled["person_id"])  # each person at exactly one hospital
    assert [len(c.rows) for c in cohorts] == sorted((len(c.rows) for c in cohorts), reverse=True)  # 40/30/20/10 %
    assert min(len(c.rows) for c in cohorts) > 200  # hospital-sized under the default minimum count 5


def test_federated_eunomia_study_equals_pooled_references(demo, pooled):
    found = results(demo)
    assert found["secure_aggregation"]["mode"] == "masked" and found["secure_aggregation"]["min_count"] == 5
    got = found["analyses"]
    n, events = len(pooled), int(pooled["gi_bleed"].sum())
    assert (got["cox_adjusted"]["n"], got["cox_adjusted"]["events"]) == (n, events)

    assert got["baseline_age"]["variables"]["age"]["mean"] == pytest.approx(pooled["age"].mean(), abs=1e-10)
    assert got["baseline_age"]["variables"]["age"]["sd"] == pytest.approx(pooled["age"].std(), abs=1e-10)
    cele, diclo = (pooled[pooled.drug == g] for g in ("celecoxib", "diclofenac"))
    welch = stats.ttest_ind(cele.age, diclo.age, equal_var=False)
    assert got["baseline_age_by_drug"]["welch"]["statistic"] == pytest.approx(welch.statistic, abs=1e-10)
    assert got["baseline_age_by_drug"]["welch"]["p"] == pytest.approx(welch.pvalue, abs=1e-10)
    for analysis, column in (("baseline_sex", "sex"), ("baseline_ulcer", "prior_ulcer")):
        table = pd.crosstab(pooled["drug"], pooled[column])
        assert got[analysis]["table"] == table.to_numpy().tolist()

    for group, rows in pooled.groupby("drug"):
        km = KaplanMeierFitter().fit(rows["days"], rows["gi_bleed"])
        curve = got["km_drug"]["groups"][group]
        np.testing.assert_array_equal(curve["time"], km.timeline)
        np.testing.assert_allclose(curve["survival"], km.survival_function_.iloc[:, 0], rtol=0, atol=1e-10)
        np.testing.assert_allclose(curve["ci_lower"], km.confidence_interval_.iloc[:, 0], rtol=0, atol=1e-10)
        np.testing.assert_array_equal(curve["events"], km.event_table["observed"])
    reference = logrank_test(cele.days, diclo.days, cele.gi_bleed, diclo.gi_bleed)
    assert got["logrank_drug"]["statistic"] == pytest.approx(reference.test_statistic, abs=1e-10)

    design = pd.get_dummies(pooled[["drug", "age", "sex", "prior_ulcer"]], drop_first=True, dtype=float)
    design.columns = ["age", "prior_ulcer", "drug[T.diclofenac]", "sex[T.male]"]
    for analysis, covariates in (("cox_crude", ["drug[T.diclofenac]"]),
                                 ("cox_adjusted", ["drug[T.diclofenac]", "age", "sex[T.male]", "prior_ulcer"])):  # fmt: skip
        data = pd.concat([design[covariates], pooled[["days", "gi_bleed"]]], axis=1)
        life = CoxPHFitter().fit(data, "days", "gi_bleed", fit_options=TIGHT)
        phreg = PHReg(data.days, data[covariates], status=data.gi_bleed, ties="efron").fit(tol=1e-14)
        for k, name in enumerate(covariates):
            assert got[analysis]["params"][name]["coef"] == pytest.approx(phreg.params[k], abs=1e-10)
            assert got[analysis]["params"][name]["se"] == pytest.approx(phreg.bse[k], abs=1e-10)
            # lifelines stops its Newton steps ~3e-8 from the optimum on these many tied durations (PHReg: 1e-14)
            assert got[analysis]["params"][name]["coef"] == pytest.approx(life.params_[name], abs=1e-7)
        assert got[analysis]["log_likelihood"] == pytest.approx(phreg.llf, abs=1e-10)
    assert got["cox_adjusted"]["params"]["prior_ulcer"]["p"] < 1e-6  # the confounder the adjustment is for


def test_ethics_pack_and_review_name_the_cdm_tables(demo):
    pack = json.loads((demo / "ethics" / "ethics.json").read_text())
    reads = {item["table"]: item["columns"] for item in pack["processing"]["omop"]["reads"]}
    assert reads["drug_exposure"] == ["person_id", "drug_concept_id", "drug_exposure_start_date"]
    assert "person_id" not in pack["processing"]["omop"]["columns"]
    assert any("celecoxib" in line for line in pack["processing"]["omop"]["definition"])
    study = protocol.load(demo / "protocol.toml")
    review = steward.preview(open_site(demo / "sites" / "omop-1"), study)
    assert "condition_occurrence: person_id, condition_concept_id, condition_start_date" in review
    assert "Index date: a person's first drug record of 'celecoxib'" in review
    assert "!" not in review.split("Site policy")[0]  # no warning: every concept is in the vocabulary


# --- a PostgreSQL hospital (real server) in the same federation ----------------------------------------------


def workbench(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})  # fmt: skip


def run_study(folder: Path, out: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    sites = [arg for site in sorted((folder / "sites").iterdir()) for arg in ("--site", site)]
    return workbench("run", folder / "protocol.toml", *sites, "--out", out, env=env)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    with start_postgres(tmp_path_factory.mktemp("postgres")) as server:
        create_role_and_database(server, "steward", PASSWORD, "hospital2")
        yield server


def test_mixed_postgresql_and_duckdb_federation_is_identical_in_bits(demo, postgres, tmp_path):
    copy = tmp_path / "federation"
    shutil.copytree(demo, copy, ignore=shutil.ignore_patterns("results.json", "transcript*", "ethics"))
    hospital = copy / "sites" / "omop-2"
    load_cdm(hospital / "cdm.duckdb", postgres, "hospital2", "cdm", "steward")
    (hospital / "cdm.duckdb").unlink()  # the hospital's data now live only in PostgreSQL
    toml = (
        (hospital / "site.toml")
        .read_text()
        .replace(
            'url = "duckdb://cdm.duckdb"',
            f'url = "{postgres.url("steward", "hospital2")}"\ncdm_schema = "cdm"\npassword_env = "OMOP2_PASSWORD"',
        )
    )
    (hospital / "site.toml").write_text(toml)
    done = run_study(copy, copy / "out", env={"OMOP2_PASSWORD": PASSWORD})
    assert done.returncode == 0, done.stderr
    assert results(copy / "out")["analyses"] == results(demo)["analyses"]  # every float equal, not just close
    written = [p.read_bytes() for p in copy.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".toml")]
    assert not any(PASSWORD.encode() in data for data in written)


# --- bad input: one clear line naming the site, exit code 2, nothing written, no credential ---------------


@pytest.fixture
def broken(demo, tmp_path) -> Path:
    copy = tmp_path / "federation"
    shutil.copytree(demo, copy, ignore=shutil.ignore_patterns("results.json", "transcript*", "ethics"))
    return copy


def _set_url(hospital: Path, lines: str) -> None:
    text = (hospital / "site.toml").read_text().replace('url = "duckdb://cdm.duckdb"', lines)
    (hospital / "site.toml").write_text(text)


def _alter(hospital: Path, statement: str) -> None:
    with duckdb.connect(str(hospital / "cdm.duckdb")) as db:
        db.execute(statement)


def _fails(copy: Path, expected: str, env: dict[str, str] | None = None) -> str:
    done = run_study(copy, copy / "out", env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("error: site omop-3: ") and expected in message, message
    assert "Traceback" not in done.stderr
    assert not (copy / "out").exists()
    assert PASSWORD not in done.stdout + done.stderr
    return message


def test_unreachable_database(demo, postgres, tmp_path):
    from tests.federation import free_port

    site = omop_site(tmp_path / "h", f'url = "postgresql://steward@127.0.0.1:{free_port()}/hospital2"')
    with pytest.raises(
        SiteError, match="cannot connect to OMOP CDM postgresql://steward@127.0.0.1:.*check \\[data\\] url"
    ):
        omop.materialise(open_site(site), example())


def test_wrong_password_through_the_cli(broken, postgres):
    _set_url(broken / "sites" / "omop-3",
             f'url = "{postgres.url("steward", "hospital2")}"\npassword_env = "OMOP3_PASSWORD"')  # fmt: skip
    message = _fails(broken, "password authentication failed", env={"OMOP3_PASSWORD": PASSWORD + "-wrong"})
    assert "check the password in $OMOP3_PASSWORD" in message and "-wrong" not in message


def test_password_from_pgpass(tmp_path, postgres, monkeypatch):
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{postgres.port}:hospital2:steward:{PASSWORD}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))  # libpq's ~/.pgpass, elsewhere
    site = omop_site(tmp_path / "h", f'url = "{postgres.url("steward", "hospital2")}"')
    with pytest.raises(SiteError, match="has no table public.cdm_source"):  # connected: the empty database's schema
        omop.materialise(open_site(site), example())
    passfile.write_text(f"127.0.0.1:{postgres.port}:hospital2:steward:{PASSWORD}-old\n")
    with pytest.raises(SiteError, match="password authentication failed.*check the password in ~/.pgpass"):
        omop.materialise(open_site(site), example())


def test_password_in_the_url_is_refused(tmp_path):
    site = omop_site(tmp_path / "h", f'url = "postgresql://steward:{PASSWORD}@127.0.0.1:5432/h"')
    with pytest.raises(SiteError, match="url holds a password: remove it") as error:
        open_site(site)
    assert PASSWORD not in str(error.value)


def test_missing_password_variable(tmp_path, postgres):
    site = omop_site(
        tmp_path / "h", f'url = "{postgres.url("steward", "hospital2")}"\npassword_env = "NOT_SET_ANYWHERE"'
    )
    with pytest.raises(SiteError, match="the environment variable NOT_SET_ANYWHERE .* is not set"):
        omop.materialise(open_site(site), example())


def test_unsupported_cdm_version_through_the_cli(broken):
    _alter(broken / "sites" / "omop-3", "UPDATE cdm_source SET cdm_version = 'v6.0'")
    _fails(broken, "is OMOP CDM version v6.0; the node reads versions 5.3, 5.4")


def test_dry_run_notes_a_concept_missing_from_a_sites_vocabulary(broken):
    _alter(broken / "sites" / "omop-3", "DELETE FROM concept WHERE concept_id = 4027663")
    sites = [arg for site in sorted((broken / "sites").iterdir()) for arg in ("--site", site)]
    done = workbench("check", broken / "protocol.toml", *sites)
    assert done.returncode == 0, done.stdout + done.stderr  # every analysis would still compute
    assert ("  note from omop-3: concept 4027663 (concept set 'peptic_ulcer') is not in this site's vocabulary: "
            "the cohort may be empty") in done.stdout  # fmt: skip
    assert "note from omop-1" not in done.stdout
    check = [
        e
        for e in map(json.loads, (broken / "sites" / "omop-3" / "state" / "audit.jsonl").open())
        if e.get("event") == "check"
    ]
    assert check[-1]["notes"] == [done.stdout.split("note from omop-3: ")[1].splitlines()[0]]


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (
            "ALTER TABLE drug_exposure DROP COLUMN drug_concept_id",
            "table main.drug_exposure in OMOP CDM duckdb://cdm.duckdb (DuckDB) has no column drug_concept_id",
        ),
        ("DROP TABLE observation_period", "has no table main.observation_period, which the cohort reads"),
        ("DELETE FROM drug_exposure", "the OMOP cohort is empty in OMOP CDM duckdb://cdm.duckdb"),
    ],
    ids=["missing column", "missing table", "empty cohort"],
)
def test_bad_cdm(demo, tmp_path, statement, expected):
    hospital = tmp_path / "omop-3"
    shutil.copytree(demo / "sites" / "omop-3", hospital)
    _alter(hospital, statement)
    with pytest.raises(SiteError) as error:
        omop.materialise(open_site(hospital), example())
    assert expected in str(error.value)


def test_unknown_concept_warns_the_steward_and_an_empty_cohort_says_so(eunomia_site):
    text = EXAMPLE.replace("celecoxib = { concepts = [1118084] }", "celecoxib = { concepts = [99999991] }")
    study = protocol.parse(text + CLEAR)
    review = steward.preview(open_site(eunomia_site), study)
    assert "! concept 99999991 (concept set 'celecoxib') is not in this site's vocabulary" in review
    alone = protocol.parse(text.replace('groups = ["celecoxib", "diclofenac"]', 'groups = ["celecoxib"]') + CLEAR)
    with pytest.raises(SiteError, match="cohort is empty.*concept 99999991 .* not in this site's vocabulary"):
        omop.materialise(open_site(eunomia_site), alone.model.cohort.omop)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("concepts = [1118084]", "concepts = [-5]"), "[cohort.concept_sets.celecoxib]: concept id -5 is not"),
        (("concepts = [1118084]", 'concepts = ["celecoxib"]'), "[cohort.concept_sets.celecoxib]: field 'concepts.0'"),
        (
            ('concept_set = "gi_bleed"', 'concept_set = "gi_bleeding"'),
            "the outcome names concept set 'gi_bleeding', which [cohort.concept_sets] does not define (did you mean "
            "'gi_bleed'?)",
        ),
        (('source = "omop"', 'source = "omop"\ntable = "patients"'), "remove 'table'"),
        (('kind = "history"', 'kind = "histroy"'), "[[cohort.covariates]] #3: field 'kind'"),
        (("start = 1, end = 30", "start = 30, end = 1"), "the window ends (day 1) before it starts (day 30)"),
    ],
)
def test_malformed_cohort_is_a_protocol_error(change, expected):
    with pytest.raises(protocol.ProtocolError) as error:
        protocol.parse(EXAMPLE.replace(*change) + CLEAR)
    assert expected in str(error.value)


def test_protocol_and_site_must_agree_on_the_source(demo, tmp_path):
    lung_like = protocol.parse(
        '[study]\nid = "x"\ntitle = "x"\n[[analysis]]\nid = "d"\ntype = "describe"\nvariables = ["age"]\n' + CLEAR
    )
    from hospital_node import population

    with pytest.raises(SiteError, match="this site's data are an OMOP CDM database"):
        population.cohort(open_site(demo / "sites" / "omop-1"), lung_like)
    files = tmp_path / "files-site"
    files.mkdir()
    with pytest.raises(SiteError, match='sets \\[data\\] source = "omop"'):
        population.cohort(open_site(files), protocol.parse(EXAMPLE + CLEAR))


def test_validate_shows_the_cohort_in_words(tmp_path, capsys):
    from workbench import cli

    path = tmp_path / "study.toml"
    path.write_text(EXAMPLE + CLEAR)
    assert cli.main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  cohort (OMOP CDM, one row per person): drug, days, gi_bleed, age, sex, prior_ulcer\n" in out
    assert "    Persons exposed to more than one group are excluded.\n" in out
