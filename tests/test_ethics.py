"""The ethics-review export: schema, manifests in section 4, a real PDF, translations, bad input.

The export of a finished run (audit heads against `workbench node audit verify`) is tested
with the demo study in test_study_flower.py.
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
import pymupdf
import pytest

from analyses import registry
from analyses.disclosure import DISCOVERY
from workbench import demo, models
from workbench import protocol as protocol_module
from workbench.training_spec import MANIFEST as TRAINING_MANIFEST

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
def planned(tmp_path_factory):
    """The demo protocol before any site exists: what the study will do."""
    folder = tmp_path_factory.mktemp("planned")
    (folder / "protocol.toml").write_text(demo.protocol_text(), encoding="utf-8")
    done = workbench("export", "ethics", folder / "protocol.toml", "--out", folder / "ethics")
    assert done.returncode == 0, done.stderr
    document = json.loads((folder / "ethics" / "ethics.json").read_text(encoding="utf-8"))
    return folder, document


def test_the_json_validates_against_its_schema(planned):
    _, document = planned
    validate(document)
    assert document["stage"] == "planned" and document["run"] is None and document["audit"] is None
    study = protocol_module.parse(demo.protocol_text())
    assert document["study"]["protocol_sha256"] == study.sha256
    assert document["study"]["purpose"] and len(document["study"]["research_questions"]) == 3


def test_every_analysis_appears_in_section_4_with_its_manifest(planned):
    folder, document = planned
    study = protocol_module.parse(demo.protocol_text())
    assert {spec.type for spec in study.analyses.values()} == set(registry.TYPES)  # the demo has every type
    listed = {entry["id"]: entry for entry in document["disclosure"]["analyses"]}
    assert list(listed) == list(study.analyses)
    assert [item["key"] for item in document["disclosure"]["discovery"]] == [item.key for item in DISCOVERY]
    html = (folder / "ethics" / "ethics.html").read_text(encoding="utf-8")
    section4 = html[html.index('id="s4"') : html.index('id="s5"')]
    for analysis_id, spec in study.analyses.items():
        declared = [(i.phase, i.key, i.shape) for i in registry.manifest(spec) if i not in DISCOVERY]
        exported = [(r["phase"], i["key"], i["shape"]) for r in listed[analysis_id]["rounds"] for i in r["items"]]
        assert exported == declared, analysis_id
        block = section4[section4.index(f"<h3>{analysis_id} — ") :]
        for _, key, _ in declared:
            assert f"<code>{key}</code>" in block
    counts = [i for entry in listed.values() for r in entry["rounds"] for i in r["items"] if i["count_rule"]]
    assert counts and all(i["control"] in ("range", "minimum", "guard") for i in counts)
    assert not any(i["dp_noise"] for entry in listed.values() for r in entry["rounds"] for i in r["items"])
    assert "No row-level data, no identifiers and no images leave any site." in section4


def test_trainings_list_the_models_tensors_and_replies(planned):
    _, document = planned
    trainings = {entry["id"]: entry for entry in document["disclosure"]["trainings"]}
    for training_id, architecture, features in (("lesion", "cnn", 0), ("death", "logistic", 5)):
        state = models.build(architecture, features).state_dict()
        entry = trainings[training_id]
        assert [t["name"] for t in entry["tensors"]] == list(state)
        assert entry["parameters"] == sum(v.numel() for v in state.values())
        assert entry["bytes_per_round"] == 4 * entry["parameters"]
        keys = [(r["phase"], i["key"]) for r in entry["replies"] for i in r["items"]]
        assert keys == [(i.phase, i.key) for i in TRAINING_MANIFEST]
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
    other = tmp_path / "other.toml"
    other.write_text(demo.protocol_text().replace('id = "ncctg-lung"', 'id = "another"'), encoding="utf-8")
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
    typo.write_text(demo.protocol_text().replace("principal_investigator", "principal_investigater"))
    done = workbench("export", "ethics", typo, "--out", tmp_path / "out")
    assert done.returncode == 2 and "did you mean 'principal_investigator'" in done.stderr
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
