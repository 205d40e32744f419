"""Protocol validation messages, and reading site folders."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from hospital_node.site import SiteError, load_table, open_site
from workbench import demo, protocol

ISSUE_EXAMPLE = """[study]
id = "ncctg-lung"
title = "Survival in advanced lung cancer"

[cohort]
table = "patients"

[variables]
sex = { levels = [1, 2] }

[privacy]
secure_aggregation = false

[[analysis]]
id = "baseline"
type = "describe"
variables = ["age", "wt.loss"]

[[analysis]]
id = "km_sex"
type = "kaplan_meier"
duration = "time"
event = "status"
group = "sex"

[[analysis]]
id = "logrank_sex"
type = "logrank"
duration = "time"
event = "status"
group = "sex"

[[analysis]]
id = "cox"
type = "cox"
duration = "time"
event = "status"
covariates = ["age", "sex", "ph.ecog"]
ties = "efron"

[[analysis]]
id = "logit"
type = "logistic"
outcome = "status"
covariates = ["age", "sex"]
"""


def test_the_contract_protocol_is_accepted_as_written_and_hashed():
    parsed = protocol.parse(ISSUE_EXAMPLE)
    assert list(parsed.analyses) == ["baseline", "km_sex", "logrank_sex", "cox", "logit"]
    assert parsed.sha256 == hashlib.sha256(ISSUE_EXAMPLE.encode()).hexdigest()
    assert parsed.levels == {"sex": [1.0, 2.0]}
    assert parsed.model.cohort.missing == "complete_cases"
    assert parsed.population(parsed.analyses["baseline"]) == ["age", "wt.loss", "time", "status", "sex", "ph.ecog"]
    assert parsed.model.study.id == "ncctg-lung"


def test_secure_aggregation_without_a_roster_is_caught_at_validation(tmp_path):
    with pytest.raises(
        protocol.ProtocolError,
        match=r"secure_aggregation is on \(the default\) but \[federation.sites\] "
        r"pins no site: add one line per site, as `workbench node identity --site DIR` prints it",
    ):
        protocol.parse(demo.protocol_text())
    sites = demo.build_sites(tmp_path)
    assert protocol.parse(demo.protocol_text() + demo.roster(sites)).model.study.id == "ncctg-lung"


@pytest.mark.parametrize(
    "edit, message",
    [
        (("ties = \"efron\"", "ties = \"exact\""), "analysis #4 (id 'cox'): field 'ties': Input should be 'efron' or 'breslow'"),
        (("covariates = [\"age\", \"sex\", \"ph.ecog\"]", "covariats = [\"age\"]"),
         "analysis #4 (id 'cox'): unknown field 'covariats' (did you mean 'covariates'?)"),
        (("id = \"logit\"", "id = \"cox\""), "id 'cox' is used twice; give each analysis and training its own id"),
        (("[cohort]", "[cohrt]"), "unknown section [cohrt] (did you mean 'cohort'?)"),
        (("type = \"logrank\"", "type = \"log-rank\""), "analysis #3 (id 'logrank_sex'): unknown type 'log-rank' (did you mean 'logrank'?)"),
        (("table = \"patients\"", "table = \"../../etc/passwd\""), "[cohort]: field 'table': String should match pattern"),
        (("outcome = \"status\"", "outcome = \"status\"\nexposure = \"time\""), "'exposure' applies only to type = \"poisson\""),
        (("sex = { levels = [1, 2] }", ""), "analysis 'km_sex' groups by 'sex': declare the values it may take in "
         "[variables], e.g. sex = { levels = [1, 2] }"),
        (("levels = [1, 2]", "levels = [1, \"2\"]"), "[variables] 'sex': field 'levels': levels must be all numbers or all text"),
        (("levels = [1, 2]", "levels = [1, 1]"), "[variables] 'sex': field 'levels': a level is listed twice"),
        (("levels = [1, 2]", "levls = [1, 2]"), "[variables] 'sex': unknown field 'levls' (did you mean 'levels'?)"),
        (("[cohort]", "[cohort]\nmissing = \"pairwise\""), "[cohort]: field 'missing': Input should be 'complete_cases' or 'per_analysis'"),
    ],
)  # fmt: skip
def test_protocol_errors_name_the_field_and_the_fix(edit, message):
    with pytest.raises(protocol.ProtocolError) as error:
        protocol.parse(ISSUE_EXAMPLE.replace(*edit), source="study.toml")
    assert str(error.value).startswith("study.toml: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_site_identity_from_site_toml_or_folder_name(tmp_path):
    (tmp_path / "a").mkdir()
    assert open_site(tmp_path / "a").id == "a"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "site.toml").write_text('[site]\nid = "hospital-b"\nname = "Hospital B"\n')
    assert (open_site(tmp_path / "b").id, open_site(tmp_path / "b").name) == ("hospital-b", "Hospital B")
    (tmp_path / "b" / "site.toml").write_text("[site\n")
    with pytest.raises(SiteError, match="site.toml: not valid TOML"):
        open_site(tmp_path / "b")


def test_tables_are_read_from_csv_or_parquet_with_line_numbers(tmp_path):
    rows = pd.DataFrame({"time": [5, 8], "status": [1, 0]})
    rows.to_parquet(tmp_path / "patients.parquet")
    site = open_site(tmp_path)
    assert load_table(site, "patients").index.tolist() == [1, 2]
    (tmp_path / "patients.parquet").unlink()
    rows.to_csv(tmp_path / "patients.csv", index=False)
    assert load_table(site, "patients").index.tolist() == [2, 3]
    (tmp_path / "patients.csv").write_text("")
    with pytest.raises(SiteError, match="patients.csv is empty"):
        load_table(site, "patients")
