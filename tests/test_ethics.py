"""The ethics-review export: schema, manifests and rules in section 4, where the thresholds apply, a real PDF,
translations, a masked run, clear mode, bad input.

The export of the demo run (audit heads against `workbench node audit verify`) is tested in test_study_flower.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pymupdf
import pytest

from analyses import registry
from analyses.disclosure import DISCOVERY, Control
from hospital_node.steward import fingerprint
from tests.conftest import make_site, protocol_text, roster, study
from workbench import demo, models, results
from workbench import protocol as protocol_module
from workbench.ethics import content, render
from workbench.server_app import StudyRun
from workbench.training_spec import manifest

ARTIFACTS = Path(__file__).parent / "artifacts" / "ethics"
SECTIONS = ("1. Study identification", "2. Purpose and research questions", "3. Description of the processing",
            "4. What leaves each site", "5. Data minimisation", "6. Privacy parameters", "7. Imaging data",
            "8. Risks and mitigations", "9. Security measures", "10. Audit summary", "11. Sign-off", "12. Annex")  # fmt: skip


def workbench(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workbench.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def validate(document: dict) -> None:
    """ethics.json against the schema the package ships (formats checked too)."""
    schema = json.loads(resources.files("workbench.ethics").joinpath("schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    jsonschema.Draft202012Validator(schema, format_checker=checker).validate(document)


def pdf_pages(path: Path, name: str) -> list[str]:
    """Every page's text; each page is rendered to PNG in tests/artifacts/ethics/ (to look at)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    texts = []
    with pymupdf.open(path) as document:
        for number, page in enumerate(document, start=1):
            pixels = page.get_pixmap(dpi=70)
            pixels.save(ARTIFACTS / f"{name}-page{number:02d}.png")
            samples = np.frombuffer(pixels.samples, dtype=np.uint8)
            assert samples.min() < 100 and samples.std() > 5, f"page {number} rendered blank"
            texts.append(page.get_text())
    return texts


@pytest.fixture(scope="module")
def sites(tmp_path_factory, lung) -> list[Path]:
    """Three sites holding the lung patients; hospital-3 is stricter (minimum 10, its own share held to it)."""
    folder = tmp_path_factory.mktemp("sites")
    rows = pd.concat(list(lung.values()), ignore_index=True)
    policies = ["", "", "min_cell_count = 10\nown_share_minimums = true"]
    return [make_site(folder / f"hospital-{n + 1}", rows.iloc[n::3], policy) for n, policy in enumerate(policies)]


@pytest.fixture(scope="module")
def planned(tmp_path_factory, sites):
    """The demo protocol, pinning three sites, before any site folder is given: what the study will do."""
    folder = tmp_path_factory.mktemp("planned")
    (folder / "protocol.toml").write_text(demo.protocol_text() + roster(sites), encoding="utf-8")
    done = workbench("export", "ethics", folder / "protocol.toml", "--out", folder / "ethics")
    assert done.returncode == 0, done.stderr
    document = json.loads((folder / "ethics" / "ethics.json").read_text(encoding="utf-8"))
    return folder, document


def flat(html: str) -> str:
    """HTML with every run of whitespace as one space (the template wraps its prose freely)."""
    return " ".join(html.split())


def items(document: dict) -> list[dict]:
    """Every item of section 4: the discovery round's and each analysis'."""
    rounds = [r for entry in document["disclosure"]["analyses"] for r in entry["rounds"]]
    return document["disclosure"]["discovery"] + [i for r in rounds for i in r["items"]]


def test_the_json_validates_against_its_schema(planned):
    folder, document = planned
    validate(document)
    assert document["stage"] == "planned" and document["run"] is None and document["audit"] is None
    protocol = protocol_module.load(folder / "protocol.toml")
    assert document["study"]["protocol_sha256"] == protocol.sha256
    assert document["study"]["purpose"] and len(document["study"]["research_questions"]) == 3


def test_every_analysis_appears_in_section_4_with_its_manifest(planned):
    folder, document = planned
    protocol = protocol_module.load(folder / "protocol.toml")
    layouts = {"cumulative_incidence", "cox_time_varying", "mantel_haenszel"}  # not on the demo's data: see below
    assert {spec.type for spec in protocol.analyses.values()} == set(registry.TYPES) - layouts
    _section4_lists_every_manifest(folder, document)


def test_competing_risks_time_varying_cox_and_mantel_haenszel_appear_in_section_4(tmp_path, sites):
    text = protocol_text(
        'id = "cif"\ntype = "cumulative_incidence"\nduration = "time"\nevent = "status"\ncauses = [1, 2]',
        'id = "mh"\ntype = "mantel_haenszel"\nexposure = "sex"\noutcome = "status"\nstrata = ["site"]',
        'id = "tv"\ntype = "cox_time_varying"\npatient = "pid"\nstart = "start"\nstop = "stop"\nevent = "status"\n'
        'covariates = ["age"]',
    )
    (tmp_path / "protocol.toml").write_text(text + roster(sites), encoding="utf-8")
    done = workbench("export", "ethics", tmp_path / "protocol.toml", "--out", tmp_path / "ethics")
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "ethics" / "ethics.json").read_text(encoding="utf-8"))
    validate(document)
    _section4_lists_every_manifest(tmp_path, document)
    roles = {v["name"]: v["role"] for entry in document["disclosure"]["analyses"] for v in entry["variables"]}
    assert roles == {"time": "duration", "status": "event", "pid": "patient", "start": "start", "stop": "stop",
                     "age": "covariates", "sex": "exposure"}  # fmt: skip
    assert next(r for r in document["risks"] if r["id"] == "risk_set_differencing")["applies"]


def _section4_lists_every_manifest(folder: Path, document: dict) -> None:
    """Section 4 lists, per analysis, every item its manifest declares, in order, with its rule."""
    protocol = protocol_module.load(folder / "protocol.toml")
    listed = {entry["id"]: entry for entry in document["disclosure"]["analyses"]}
    assert list(listed) == list(protocol.analyses)
    assert [item["key"] for item in document["disclosure"]["discovery"]] == [item.key for item in DISCOVERY]
    html = (folder / "ethics" / "ethics.html").read_text(encoding="utf-8")
    section4 = html[html.index('id="s4"') : html.index('id="s5"')]
    for analysis_id, spec in protocol.analyses.items():
        declared = [(i.phase, i.key, i.shape) for i in registry.manifest(spec) if i not in DISCOVERY]
        exported = [(r["phase"], i["key"], i["shape"]) for r in listed[analysis_id]["rounds"] for i in r["items"]]
        assert exported == declared, analysis_id
        block = section4[section4.index(f"<h3>{analysis_id} — ") :]
        for _, key, _ in declared:
            assert f"<code>{key}</code>" in block
    counts = [i for entry in listed.values() for r in entry["rounds"] for i in r["items"] if i["count_rule"]]
    assert counts and all(i["control"] in ("range", "minimum", "guard", "rank") for i in counts)
    assert not any(i["dp_noise"] for entry in listed.values() for r in entry["rounds"] for i in r["items"])
    assert "No row-level data, no identifiers and no images leave any site." in section4


def test_under_secure_aggregation_the_rules_apply_to_the_published_totals(planned, sites):
    folder, document = planned
    assert document["aggregation"] == {"masked": True, "minimum_sites": 3, "thresholds": "cross-site totals",
                                       "min_count": None, "mode": None, "other_sites": 2, "graph": "sparse",
                                       "neighbours": 2}  # fmt: skip
    found = items(document)
    for item in found:
        assert len(item["rules"]) == 1 and item["rules"][0]["sites"] == []  # no site folder: the default policy
        text = item["rules"][0]["text"]
        if item["key"].startswith("kind:"):
            assert item["sent"] and not item["masked"] and "in the clear" in text
        elif item["per_time"] and item["control"] == Control.GUARD:
            assert not item["sent"] and not item["masked"] and text.startswith("not sent")
        elif text.startswith("checked at this site"):  # terms of one site's own data: its own counts checked there
            assert not item["sent"] and not item["masked"] and item["control"] == Control.GUARD
        else:  # everything else leaves masked, guards and saturation included (checked on the totals)
            assert item["sent"] and item["masked"] and text.startswith("masked"), item
        if item["control"] == Control.MINIMUM and not item["per_time"]:
            assert "cross-site total must be 0 or ≥ k" in text and "(k ≥ 5)" in text
        if item["control"] == Control.RANGE:
            assert "published as a range" in text
    html = flat((folder / "ethics" / "ethics.html").read_text(encoding="utf-8"))
    section4 = html[html.index('id="s4"') : html.index('id="s5"')]
    assert "to the <b>cross-site totals</b>" in section4 and "<b>each site's reply</b>" not in section4
    assert "all 2 other pinned sites</b> collude" in section4
    pinned = protocol_module.load(folder / "protocol.toml").model.federation.sites
    assert list(pinned) == [site.name for site in sites]
    for site, line in pinned.items():
        assert f"<td>{site}</td><td><code>{fingerprint(line)}</code>" in section4
    assert "a masked 0/1 saying whether any of the site's rows holds it" in section4
    risks = html[html.index('id="s8"') : html.index('id="s9"')]
    assert "complementary ranges" in risks and "one population per study" in risks
    assert "nothing per site is in the clear but column kinds" in risks and "all 2 sites it masks with collude" in risks
    assert "<code>workbench check PROTOCOL --site DIR…</code>" in html


def test_declared_values_missing_values_and_time_resolution_are_listed(planned):
    folder, document = planned
    protocol = protocol_module.load(folder / "protocol.toml")
    levels = {v["name"]: v["levels"] for v in document["minimisation"]["variables"]}
    assert levels["sex"] == ["1", "2"] and levels["ph.ecog"] == ["0", "1", "2", "3", "4"] and levels["age"] is None
    assert document["minimisation"]["missing"] == "complete_cases"
    everything = protocol.population(next(iter(protocol.analyses.values())))
    assert all(entry["population"] == everything for entry in document["disclosure"]["analyses"])
    survival = [
        key
        for key, spec in protocol.analyses.items()
        if spec.type in ("kaplan_meier", "rmst", "logrank", "cox", "ipw_cox")
    ]
    resolutions = [{"analysis": key, "grid": None, "width": 1.0} for key in survival]  # the default: whole days
    assert document["privacy"]["time_resolutions"] == resolutions
    html = flat((folder / "ethics" / "ethics.html").read_text(encoding="utf-8"))
    section5 = html[html.index('id="s5"') : html.index('id="s6"')]
    assert "<td>0, 1, 2, 3, 4</td>" in section5 and 'missing = "complete_cases"' in section5
    assert "time resolution: 1 (the duration's own unit)" in html


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory, sites):
    """A real masked study at the three sites (their node handlers, in process), written as a run folder."""
    folder = tmp_path_factory.mktemp("run")
    text = protocol_text('id = "ages"\ntype = "describe"\nvariables = ["age"]') + roster(sites)
    (folder / "protocol.toml").write_text(text, encoding="utf-8")
    analyses, exchange = study(sites, text)
    assert "error" not in analyses["ages"], analyses
    run = StudyRun(analyses=analyses, sites=exchange.replies, refusals=exchange.refusals,
                   aggregation=exchange.summary(), rounds=exchange.rounds)  # fmt: skip
    document = results.build(protocol_module.parse(text), run, engine="in-process")
    (folder / "results.json").write_text(json.dumps(document), encoding="utf-8")
    return folder


def test_a_masked_run_reports_no_cohort_sizes_and_each_sites_rules(masked_run, sites, tmp_path):
    done = workbench("export", "ethics", masked_run / "protocol.toml", *[a for s in sites for a in ("--site", s)],
                     "--run", masked_run, "--out", tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "ethics.json").read_text(encoding="utf-8"))
    validate(document)
    assert document["run"]["rows"] is None and all(site["rows"] is None for site in document["sites"])
    assert document["aggregation"]["mode"] == "masked" and document["aggregation"]["min_count"] == 10
    assert [site["policy"]["own_share_minimums"] for site in document["sites"]] == [False, False, True]
    rows = next(i for i in items(document) if i["key"] == "rows")
    assert [r["sites"] for r in rows["rules"]] == [["hospital-1", "hospital-2"], ["hospital-3"]]
    default, strict = (r["text"] for r in rows["rules"])
    assert default.startswith("masked; the cross-site total must be 0 or ≥ k")
    assert strict.startswith("sent if each count is 0 or ≥ 10") and "again to the cross-site total" in strict
    html = flat((tmp_path / "ethics.html").read_text(encoding="utf-8"))
    assert "cohort sizes not reported under secure aggregation" in html and "(here 10)" in html
    assert "<i>hospital-3:</i> sent if each count is 0 or ≥ 10" in html
    assert "<td>hospital-3</td><td><code>SHA256:" in html and "<td>3</td><td>yes</td><td>refused</td>" in html


def test_in_the_clear_each_site_applies_its_rules_to_its_own_reply():
    text = protocol_text('id = "ages"\ntype = "describe"\nvariables = ["age"]\n[[analysis]]\nid = "km"\n'
                         'type = "kaplan_meier"\nduration = "time"\nevent = "status"\ntime_grid = "week"',
                         cohort='missing = "per_analysis"\n') + "[privacy]\nsecure_aggregation = false\n"  # fmt: skip
    document = content.build(protocol_module.parse(text), [], None, "en")
    validate(document)
    assert document["aggregation"]["thresholds"] == "each site's reply" and not document["aggregation"]["masked"]
    assert not any(item["masked"] for item in items(document))
    minimum = next(i for i in items(document) if i["key"] == "rows")
    assert minimum["rules"] == [{"text": "sent if each count is 0 or ≥ 5, else refused", "sites": []}]
    assert document["privacy"]["time_resolutions"] == [{"analysis": "km", "grid": "week", "width": 7.0}]
    html = flat(render.html(render.template("en", None), document, b""))
    assert "<b>not masked</b> (secure aggregation is off in the protocol)" in html
    assert "apply to <b>each site's reply</b>, with the site's own <i>k</i>" in html
    assert "Reads <code>age</code> (described variable); uses every cohort row" in html
    assert "time resolution: weeks (7 days); uses the rows with a value in <code>time</code>" in html
    assert 'missing = "per_analysis"' in html and "collude" not in html


def test_trainings_list_the_models_tensors_and_replies(planned):
    _, document = planned
    trainings = {entry["id"]: entry for entry in document["disclosure"]["trainings"]}
    for training_id, architecture, features, task in (("lesion", "maxpool_cnn", 0, "image_classification"),
                                                      ("death", "logistic", 5, "tabular_classification")):  # fmt: skip
        state = models.build(architecture, features).state_dict()
        entry = trainings[training_id]
        assert [t["name"] for t in entry["tensors"]] == list(state)
        assert entry["parameters"] == sum(v.numel() for v in state.values())
        assert entry["bytes_per_round"] == 4 * entry["parameters"]
        keys = [(r["phase"], i["key"]) for r in entry["replies"] for i in r["items"]]
        assert keys == [(i.phase, i.key) for i in manifest(task)]
    assert document["imaging"]["used"] and "PixelData" in document["imaging"]["attributes_read"]
    assert "PatientName" not in document["imaging"]["attributes_read"]


def test_the_pdf_is_a_real_document_with_contents_and_page_numbers(planned):
    folder, document = planned
    texts = pdf_pages(folder / "ethics" / "ethics.pdf", "planned")
    total = len(texts)
    assert total >= 10
    for number, text in enumerate(texts, start=1):
        assert f"page {number} of {total}" in text
    contents = texts[0]
    assert "Contents" in contents
    lines, starts = contents.splitlines(), {}
    for title in SECTIONS:
        assert title in lines, title
        starts[title] = int(lines[lines.index(title) - 1])  # the entry's page number (extracted before it)
        assert title in texts[starts[title] - 1], f"{title} is not on page {starts[title]}"
    assert list(starts.values()) == sorted(starts.values())
    with pymupdf.open(folder / "ethics" / "ethics.pdf") as pdf:
        assert any(page.get_images() for page in pdf), "the data-flow diagram is missing"
        fonts = {font[3] for page in pdf for font in page.get_fonts()}
    assert any("DejaVu" in font for font in fonts), fonts  # embedded: it draws ε, δ, ≥ and →
    assert "ε" in "".join(texts)


def test_a_site_can_add_a_translation(planned, tmp_path):
    folder, _ = planned
    english = resources.files("workbench.ethics").joinpath("templates/ethics.en.html.j2").read_text(encoding="utf-8")
    german = (english.replace('<html lang="en">', '<html lang="de">')
              .replace('"What leaves each site"', '"Was jeden Standort verlässt"')
              .replace('"Each hospital (site)"', '"Jedes Krankenhaus"'))  # fmt: skip
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "ethics.de.html.j2").write_text(german, encoding="utf-8")
    done = workbench("export", "ethics", folder / "protocol.toml", "--out", tmp_path / "out", "--lang", "de",
                     "--templates", tmp_path / "templates")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "4. Was jeden Standort verlässt" in (tmp_path / "out" / "ethics.html").read_text(encoding="utf-8")
    assert json.loads((tmp_path / "out" / "ethics.json").read_text())["language"] == "de"
    texts = pdf_pages(tmp_path / "out" / "ethics.pdf", "translated")
    assert "4. Was jeden Standort verlässt" in texts[0]
    missing = workbench("export", "ethics", folder / "protocol.toml", "--out", tmp_path / "fr", "--lang", "fr")
    assert missing.returncode == 2 and "no ethics template for language 'fr'" in missing.stderr
    assert "available: en" in missing.stderr and "Traceback" not in missing.stderr


def test_bad_input_is_named_and_nothing_is_written(planned, tmp_path):
    folder, _ = planned
    text = (folder / "protocol.toml").read_text(encoding="utf-8")
    other = tmp_path / "other.toml"
    other.write_text(text.replace('id = "ncctg-lung"', 'id = "another"'), encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"format": "workbench-results/1", "protocol_sha256": "ab" * 32}))
    cases = [
        (["--run", run], "this run used protocol abababababab"),
        (["--run", tmp_path / "nowhere"], "results.json: not found"),
        (["--site", tmp_path / "no-site"], "site folder not found"),
    ]
    for extra, needle in cases:
        out = tmp_path / "out"
        done = workbench("export", "ethics", other, "--out", out, *extra)
        assert done.returncode == 2 and needle in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert not out.exists() or not any(out.iterdir())
    typo = tmp_path / "typo.toml"
    typo.write_text(text.replace("principal_investigator", "principal_investigater"))
    done = workbench("export", "ethics", typo, "--out", tmp_path / "out")
    assert done.returncode == 2 and "did you mean 'principal_investigator'" in done.stderr
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
