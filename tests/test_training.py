"""DP training at the nodes: DICOM reading, budget and ledger, update shapes, and a Flower run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from pydicom.data import get_testdata_file

from analyses.contract import DataError
from analyses.disclosure import Refused
from hospital_node import approvals, imaging, train_handler
from hospital_node.audit import AuditLog
from hospital_node.privacy_ledger import PrivacyLedger
from hospital_node.site import open_site
from hospital_node.training import LocalData, noise_multiplier, train_round
from tests.conftest import make_site, roster
from workbench import models, synthetic_imaging
from workbench.protocol import parse
from workbench.training_spec import TrainingSpec, parameter_count

REAL_FILES = {
    "CT_small.dcm": None, "MR_small.dcm": None, "MR_small_RLE.dcm": None, "MR_small_bigendian.dcm": None,
    "MR_small_implicit.dcm": None, "MR_small_jp2klossless.dcm": None, "SC_rgb_rle.dcm": None,
    "MR_truncated.dcm": "truncated pixel data",
    "MR_small_jpeg_ls_lossless.dcm": "unsupported transfer syntax (no decoder installed)",
    "JPEG-lossy.dcm": "unsupported transfer syntax (no decoder installed)",
    "no_meta.dcm": "no pixel data", "rtplan.dcm": "no pixel data", "badVR.dcm": "malformed element value",
}  # fmt: skip


@pytest.fixture
def dicom_site(tmp_path):
    """A site folder holding pydicom's real test files (good and broken), in nested folders."""
    images = tmp_path / "site" / "images"
    for number, name in enumerate(REAL_FILES):
        target = images / ("series" if number % 2 else "") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(get_testdata_file(name, download=False), target)
    rows = [{"file": str(p.relative_to(images)), "label": i % 2} for i, p in enumerate(sorted(images.rglob("*.dcm")))]
    pd.DataFrame([*rows, {"file": "gone.dcm", "label": 1}]).to_csv(tmp_path / "site" / "images.csv", index=False)
    return tmp_path / "site"


def test_real_dicom_files_are_read_or_skipped_with_their_reason(dicom_site):
    found = imaging.load(dicom_site, "images", "images.csv", (32, 32))
    expected: dict[str, int] = {"listed in the labels file but missing": 1}
    for reason in REAL_FILES.values():
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
    assert found.skipped == dict(sorted(expected.items()))
    assert found.images.shape == (7, 1, 32, 32) and found.images.dtype == np.float32
    assert found.images.min() == 0.0 and found.images.max() == 1.0  # each slice scaled to [0, 1]
    assert found.listed == len(REAL_FILES) + 1


def test_labels_can_name_images_by_sop_instance_uid(dicom_site):
    ct = pydicom.dcmread(dicom_site / "images" / "CT_small.dcm")
    mr = pydicom.dcmread(dicom_site / "images" / "series" / "MR_small.dcm")
    (dicom_site / "by_uid.csv").write_text(f"sop_instance_uid,label\n{ct.SOPInstanceUID},1\n{mr.SOPInstanceUID},0\n")
    found = imaging.load(dicom_site, "images", "by_uid.csv", (16, 16))
    assert list(found.labels) == [1]  # MR_small's variants all carry its UID: which file is meant is unclear
    assert found.skipped == {"several files share its SOP Instance UID": 1}


def test_bad_labels_and_paths_outside_the_site_are_refused(dicom_site):
    (dicom_site / "bad.csv").write_text("file,label\nCT_small.dcm,2\n")
    with pytest.raises(DataError, match=r"bad.csv: label must be 0 or 1 \(found '2' at line 2\)"):
        imaging.load(dicom_site, "images", "bad.csv", (16, 16))
    with pytest.raises(DataError, match="points outside the site folder"):
        imaging.load(dicom_site, "../../etc", "images.csv", (16, 16))


def _training(**fields) -> TrainingSpec:
    base = {"id": "m", "task": "image_classification", "images": "images", "labels": "images.csv",
            "model": "cnn", "image_size": [16, 16], "rounds": 2, "batch_size": 4, "privacy": {"target_epsilon": 3.0}}  # fmt: skip
    return TrainingSpec.model_validate({**base, **fields})


@pytest.mark.parametrize("architecture", ["cnn", "maxpool_cnn", "densenet_small", "logistic", "mlp"])
def test_updates_have_the_models_own_names_and_shapes(architecture):
    features = 0 if architecture in ("cnn", "maxpool_cnn", "densenet_small") else 3
    shape = (24, 1, 16, 16) if features == 0 else (24, 3)
    x, y = torch.rand(shape), torch.randint(0, 2, (24,))
    spec = _training(model=architecture) if features == 0 else _training(
        task="tabular_classification", model=architecture, outcome="y", features=["a", "b", "c"])  # fmt: skip
    sigma, rate, steps = noise_multiplier(spec, 24)
    model = models.build(architecture, features)
    reference = {name: value.shape for name, value in model.state_dict().items()}
    state, history, loss = train_round(model, LocalData(x, y, x, y), spec, sigma, proximal_mu=0.1)
    assert {name: value.shape for name, value in state.items()} == reference  # no "_module." prefixes
    assert history == [(sigma, rate, steps)] and np.isfinite(loss)


@pytest.mark.parametrize(
    "architecture", ["cnn", "maxpool_cnn", "densenet_small", "densenet121", "unet", "logistic", "mlp"]
)
def test_the_torch_free_parameter_count_matches_the_built_model(architecture):
    features = 5 if architecture in ("logistic", "mlp") else 0
    built = sum(p.numel() for p in models.build(architecture, features).parameters())
    assert parameter_count(architecture, features) == built


def _image_site(folder: Path, name: str, patients: int, policy: str) -> Path:
    site = make_site(folder / name, pd.DataFrame({"patient_id": [f"{name}-{i}" for i in range(patients)]}), policy)
    synthetic_imaging.write_site(site, name, pd.Series([f"{name}-{i}" for i in range(patients)]),
                                 synthetic_imaging.SCANNERS[0], size=16)  # fmt: skip
    return site


def _train_request(protocol, training_id: str, round_number: int) -> RecordDict:
    spec = protocol.trainings[training_id]
    model = models.build(spec.architecture, len(spec.features))
    config = {"protocol": protocol.text, "sha256": protocol.sha256, "training": training_id,
              "server-round": round_number, "mean": [], "sd": []}  # fmt: skip
    return RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord(config)})


TRAINING = """
[[training]]
id = "{id}"
task = "image_classification"
images = "images"
labels = "images.csv"
model = "cnn"
image_size = [16, 16]
rounds = 2
batch_size = 4
[training.privacy]
target_epsilon = {epsilon}
"""


def _protocol(site: Path, study: str, epsilon: float, training_id: str = "lesion"):
    text = f'[study]\nid = "{study}"\ntitle = "t"\n' + TRAINING.format(id=training_id, epsilon=epsilon) + roster([site])
    protocol = parse(text)
    approvals.approve(open_site(site), protocol, by="steward")
    return protocol


def test_the_budget_is_accounted_across_rounds_and_studies_and_refused_when_spent(tmp_path):
    site = _image_site(tmp_path, "h1", 30, "max_epsilon = 5.0\nclear_aggregation = true")
    first = _protocol(site, "first", 3.0)
    for round_number in (1, 2):
        reply = train_handler.train(site, _train_request(first, "lesion", round_number), "test")
        spent = float(reply.metric_records["metrics"]["epsilon"])
    assert spent == pytest.approx(3.0, abs=0.02) and spent <= 3.0
    with pytest.raises(Refused, match=r"would bring the training's ε to .* above its target 3"):
        train_handler.train(site, _train_request(first, "lesion", 3), "test")  # a third round: not planned, not paid
    ledger = PrivacyLedger(open_site(site).state)  # persisted: a new reader sees the same
    key = f"{first.sha256}/lesion"
    assert ledger.entry(key)["rounds"] == [1, 2] and len(ledger.entry(key)["history"]) == 2
    second = _protocol(site, "second", 3.0)
    with pytest.raises(Refused, match=r"would bring the site's ε to .* above its max_epsilon = 5"):
        train_handler.train(site, _train_request(second, "lesion", 1), "test")
    releases = [e for e in AuditLog(open_site(site).state).entries() if e["event"] == "release"]
    assert [round(e["epsilon"], 6) for e in releases] == [round(e, 6) for e in (releases[0]["epsilon"], spent)]


def test_a_protocol_asking_for_a_looser_delta_than_the_site_is_refused(tmp_path):
    site = _image_site(tmp_path, "h1", 20, "delta = 1e-6\nclear_aggregation = true")
    protocol = _protocol(site, "loose", 3.0)
    with pytest.raises(Refused, match="δ = 1e-05 is above the site's δ = 1e-06"):
        train_handler.train(site, _train_request(protocol, "lesion", 1), "test")


def test_a_site_with_too_many_unreadable_images_refuses(tmp_path):
    site = _image_site(tmp_path, "h1", 10, "clear_aggregation = true")
    for path in sorted((site / "images").glob("*.dcm"))[:3]:
        path.write_bytes(path.read_bytes()[:-50])
    protocol = _protocol(site, "broken", 3.0)
    with pytest.raises(Refused, match=r"3 of 10 labelled images cannot be used \(3 truncated pixel data\)"):
        train_handler.train(site, _train_request(protocol, "lesion", 1), "test")


def test_synthetic_hospitals_differ_like_scanners_and_match_the_patient_table(tmp_path):
    pixel_spacing, manufacturers = set(), set()
    for number, scanner in enumerate(synthetic_imaging.SCANNERS[:3]):
        folder = tmp_path / f"h{number}"
        synthetic_imaging.write_site(folder, f"h{number}", pd.Series(["P1", "P2"]), scanner, size=16)
        dataset = pydicom.dcmread(folder / "images" / "P1.dcm")
        assert dataset.Modality == "MR" and dataset.PatientID == "P1" and dataset.SOPClassUID.name == "MR Image Storage"
        pixel_spacing.add(float(dataset.PixelSpacing[0]))
        manufacturers.add(dataset.Manufacturer)
        assert list(pd.read_csv(folder / "images.csv").patient_id) == ["P1", "P2"]
    assert len(pixel_spacing) == 3 and len(manufacturers) == 3


def test_fedprox_training_through_flower_records_refusals_and_saves_models(tmp_path):
    sites = [_image_site(tmp_path, f"h{k}", 24, "clear_aggregation = true") for k in range(3)]
    (sites[2] / "site.toml").write_text('[site]\nid = "h2"\n[policy]\nmax_epsilon = 1.0\nclear_aggregation = true\n')
    text = '[study]\nid = "dp"\ntitle = "t"\n' + TRAINING.format(id="lesion", epsilon=2.0).replace(
        'model = "cnn"', 'model = "cnn"\nstrategy = "fedprox"\nproximal_mu = 0.5') + roster(sites)  # fmt: skip
    protocol_file = tmp_path / "protocol.toml"
    protocol_file.write_text(text)
    for site in sites:
        approvals.approve(open_site(site), parse(text), by="steward")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "run", str(protocol_file),
                           *[a for s in sites for a in ("--site", str(s))], "--out", str(out)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    training = json.loads((out / "results.json").read_text())["training"]["lesion"]
    assert training["strategy"] == "fedprox" and len(training["rounds"]) == 2
    assert set(training["epsilon"]) == {"h0", "h1"} and all(0 < e <= 2.0 for e in training["epsilon"].values())
    assert [r["reason"].split(":")[0] for r in training["refusals"]] == ["site h2", "site h2"]
    assert "above its max_epsilon = 1" in training["refusals"][0]["reason"]
    state = torch.load(out / "models" / "lesion" / "final.pt")
    models.build("cnn").load_state_dict(state)
    card = json.loads((out / "models" / "lesion" / "model_card.json").read_text())
    assert card["privacy"]["epsilon_spent"] == training["epsilon"] and card["sites"] == ["h0", "h1"]
    assert "training lesion: round 2/2" in done.stderr
