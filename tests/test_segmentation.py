"""Federated DP segmentation: DICOM series from three synthetic scanners trained through Flower, Dice per site and
pooled with its 95% CI, rejected series counted, per-site ε, model card and ethics content."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from hospital_node import approvals, dicom_series, steward
from hospital_node.audit import AuditLog
from hospital_node.site import open_site
from tests.conftest import make_site, roster
from workbench import demo, models, synthetic_series
from workbench.protocol import ProtocolError, parse
from workbench.training import pooled_dice

SEGMENTATION = """
[[training]]
id = "lesion_seg"
task = "image_segmentation"
images = "series"
masks = "masks"
spacing = [3.0, 3.0, 4.0]
volume_size = [32, 32, 16]
window = [-100.0, 300.0]
rounds = 2
batch_size = 6
learning_rate = 1.0
validation_fraction = 0.45
[training.privacy]
target_epsilon = 3.0
"""


def test_pooled_dice_equals_the_pooled_volumes():
    rng = np.random.default_rng(1)
    values = [rng.uniform(0.4, 0.95, n) for n in (6, 9, 14)]
    sites = [{"num-examples": len(v), "dice": v.mean(), "dice-sd": v.std(ddof=1)} for v in values]
    pooled = np.concatenate(values)
    low, high = stats.t.interval(0.95, len(pooled) - 1, loc=pooled.mean(), scale=stats.sem(pooled))
    found = pooled_dice(sites)
    assert found["dice"] == pytest.approx(pooled.mean(), abs=1e-14)
    assert found["dice-sd"] == pytest.approx(pooled.std(ddof=1), abs=1e-12)
    assert (found["dice-ci-low"], found["dice-ci-high"]) == pytest.approx((low, high), abs=1e-12)


def test_a_segmentation_spec_is_checked():
    base = {"id": "s", "task": "image_segmentation", "images": "series", "privacy": {"target_epsilon": 3.0}}
    with pytest.raises(
        ProtocolError, match=r"training #1 \(id .s.\): an image_segmentation needs .images. .*and .masks."
    ):
        parse('[study]\nid = "x"\ntitle = "t"\n[[training]]\nid = "s"\ntask = "image_segmentation"\nimages = "s"\n'
              "[training.privacy]\ntarget_epsilon = 3.0\n")  # fmt: skip
    from workbench.training_spec import TrainingSpec

    with pytest.raises(ValueError, match="multiples of 4"):
        TrainingSpec.model_validate({**base, "masks": "m", "volume_size": [30, 32, 16]})
    with pytest.raises(ValueError, match="not a segmentation model"):
        TrainingSpec.model_validate({**base, "masks": "m", "model": "cnn"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[Path], subprocess.CompletedProcess]:
    """Three hospitals of 12 patients (three scanners, default policy), one series damaged; trained via the CLI."""
    root = tmp_path_factory.mktemp("segmentation")
    sites = []
    for number in range(3):
        name = f"h{number}"
        patients = pd.Series([f"{name}-{i:02d}" for i in range(12 if number else 13)])
        site = make_site(root / name, pd.DataFrame({"patient_id": patients}), 'row_id = "patient_id"')
        synthetic_series.write_site(site, name, patients, synthetic_series.SERIES_SCANNERS[number])
        sites.append(site)
    demo.drop_a_middle_slice(sites[0] / "series")
    text = '[study]\nid = "seg"\ntitle = "Lesion contours"\n' + SEGMENTATION + roster(sites)
    (root / "protocol.toml").write_text(text)
    for site in sites:
        approvals.approve(open_site(site), parse(text), by="steward")
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "run", str(root / "protocol.toml"),
                           *[a for s in sites for a in ("--site", str(s))], "--out", str(root / "out")],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    return root, sites, done


def test_federated_dp_segmentation_through_flower(trained):
    root, sites, done = trained
    assert done.returncode == 0, done.stderr
    summary = json.loads((root / "out" / "results.json").read_text())["training"]["lesion_seg"]
    assert summary["task"] == "image_segmentation" and summary["model"] == "unet" and len(summary["rounds"]) == 2
    assert set(summary["epsilon"]) == {"h0", "h1", "h2"} and all(0 < e <= 3.0 for e in summary["epsilon"].values())
    assert summary["skipped_images"]["h0"] == {dicom_series.UNEVEN_SPACING: 1}
    assert summary["refusals"] == []
    last = summary["rounds"][-1]["evaluate"]
    assert {site["num-examples"] for site in last["sites"].values()} == {5.0}  # 12 usable volumes, 45 % held out
    pooled = last["weighted"]
    assert pooled["dice"] == pytest.approx(np.mean([s["dice"] for s in last["sites"].values()]), abs=1e-12)
    assert pooled["dice-ci-low"] <= pooled["dice"] <= pooled["dice-ci-high"]
    assert all(0.0 <= site["dice"] <= 1.0 and "hd95" not in site or site["hd95"] > 0 for site in last["sites"].values())
    models.build("unet").load_state_dict(torch.load(root / "out" / "models" / "lesion_seg" / "final.pt"))
    card = (root / "out" / "models" / "lesion_seg" / "model_card.md").read_text()
    assert "one sample is one patient's volume (DICOM series)" in card and "Dice over all held-out volumes" in card
    assert "h0 skipped 1 series: uneven slice spacing (missing slices)" in done.stdout
    releases = [
        e
        for e in AuditLog(open_site(sites[1]).state).entries()
        if e["event"] == "release" and e.get("phase") == "evaluate"
    ]
    assert len(releases) == 2 and set(releases[0]["metrics"]) >= {"num-examples", "loss", "dice", "dice-sd"}


def test_the_ethics_content_lists_the_series_and_the_attributes_read(trained):
    from workbench.ethics.content import build

    root, sites, _ = trained
    protocol = parse((root / "protocol.toml").read_text())
    document = build(protocol, [open_site(s) for s in sites], root / "out", "en")
    imaging = document["imaging"]
    sent = {item["key"] for r in document["disclosure"]["trainings"][0]["replies"] for item in r["items"]}
    assert {"dice", "dice-sd", "hd95", "skipped"} <= sent and not {"auc", "accuracy"} & sent
    review = steward.preview(open_site(sites[0]), protocol)
    assert "their NIfTI masks in 'masks'" in review and "dice-sd" in review and " auc " not in review
    assert imaging["used"] and imaging["trainings"][0]["labels"] == "masks"
    assert "resampled to 3×3×4 mm, 32×32×16 voxels, window -100 to 300" in imaging["trainings"][0]["prepared"]
    assert {"ImagePositionPatient", "ImageOrientationPatient"} <= set(imaging["attributes_read"])
    assert not {"PatientName", "PatientID", "StudyDate"} & set(imaging["attributes_read"])
    from workbench.ethics import export

    export(root / "protocol.toml", sites, root / "out", root / "ethics")
    html = (root / "ethics" / "ethics.html").read_text()
    assert "Segmentation of DICOM series (3-D, per patient)" in html and "masks" in html
    assert (root / "ethics" / "ethics.pdf").stat().st_size > 10_000


def test_the_results_page_shows_dice_and_the_model_on_an_example_series(trained, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from ui.roles import Role

    root, _, _ = trained
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path))
    shutil.copytree(root / "out", tmp_path / "runs" / "20260101-000000-000000" / "out")
    page = AppTest.from_file(str(Path(__file__).parents[1] / "ui" / "screens" / "results.py"), default_timeout=120)
    page.session_state["role"] = Role("researcher")
    page.run()
    assert not page.exception
    assert "model lesion_seg · image_segmentation" in [h.value for h in page.subheader]
    rounds = next(frame.value for frame in page.dataframe if "dice-ci-low" in frame.value.columns)
    assert rounds["round"].tolist() == [1, 2] and (rounds["dice-ci-low"] <= rounds["dice"]).all()
    assert any("generated here and read by the nodes' own series loader" in c.value for c in page.caption)
    labels = [b.label for b in page.get("download_button")]
    assert labels.count("PNG") >= 3  # curves, the example series, ε


def test_the_segmentation_demo_builds_five_scanners_and_its_protocol_runs_on_them(tmp_path):
    from hospital_node.dry_run import verdicts

    sites = demo.build_series_sites(tmp_path, patients=6)
    protocol = parse(demo.protocol_text("segmentation") + demo.roster(sites))
    spec = protocol.trainings["lesion_contours"]
    shapes, skipped = set(), {}
    for site in sites:
        found = dicom_series.load(site, spec.images, spec.masks, spec.spacing, spec.volume_size, spec.window)
        shapes.add(found.images.shape[1:])
        skipped[site.name] = found.skipped
    assert shapes == {(1, 32, 32, 16)}
    assert skipped == {f"ct-{k}": ({dicom_series.UNEVEN_SPACING: 1} if k == 2 else {}) for k in range(1, 6)}
    assert {open_site(s).policy.min_cell_count for s in sites} == {5}  # the default policy
    approvals.approve(open_site(sites[0]), protocol, by="steward")
    assert verdicts(open_site(sites[0]), protocol, masked=True)[0] == {"lesion_contours": ""}
