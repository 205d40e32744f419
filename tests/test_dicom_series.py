"""DICOM series → 3-D volumes at the node: geometry, slice order, RAS resampling, masks and every rejection reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from analyses.contract import DataError
from hospital_node import dicom_series
from hospital_node.dicom_series import load, read_series
from workbench.synthetic_series import CENTRE, LESION, SERIES_SCANNERS, TISSUE, lesion, write_site

SPACING, SIZE, WINDOW = (2.0, 2.0, 2.0), (48, 48, 32), (-100.0, 300.0)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write(root: Path, number: int, patients: int, shuffle: bool = True) -> Path:
    """Site `h<number>` with scanner `number`; returns the site folder."""
    site = root / f"h{number}"
    write_site(site, site.name, pd.Series([f"h{number}-{i}" for i in range(patients)]), SERIES_SCANNERS[number],
               shuffle=shuffle)  # fmt: skip
    return site


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> list[Path]:
    """One site per synthetic scanner, 4 patients each, files shuffled."""
    root = tmp_path_factory.mktemp("sites")
    return [_write(root, number, 4) for number in range(len(SERIES_SCANNERS))]


def _slices(folder: Path) -> dict[str, list[tuple[pydicom.Dataset, Path]]]:
    """The files of each series (headers only), in order along z."""
    found: dict[str, list[tuple[pydicom.Dataset, Path]]] = {}
    for path in folder.iterdir():
        header = pydicom.dcmread(path, stop_before_pixels=True)
        found.setdefault(header.SeriesInstanceUID, []).append((header, path))
    return {uid: sorted(files, key=lambda f: float(f[0].ImagePositionPatient[2])) for uid, files in found.items()}


def _patients(folder: Path) -> dict[str, str]:
    return {uid: str(files[0][0].PatientID) for uid, files in _slices(folder).items()}


def test_series_read_back_with_the_writers_affine_whatever_the_file_order(sites, tmp_path):
    for number, site in enumerate(sites):
        scanner = SERIES_SCANNERS[number]
        shuffled, skipped = read_series(site / "series")
        ordered, _ = read_series(_write(tmp_path, number, 4, shuffle=False) / "series")
        assert skipped == {} and len(shuffled) == 4
        patients = _patients(site / "series")
        for series, same in zip(shuffled, ordered, strict=True):
            mask = nib.load(site / "masks" / f"{series.uid}.nii.gz")
            assert series.uid == same.uid and np.array_equal(series.volume, same.volume)
            assert np.allclose(series.affine, mask.affine, atol=1e-5) and series.volume.shape == mask.shape
            assert series.files == round(64 / scanner.slice_spacing) and series.volume.dtype == np.float32
            steps = [scanner.pixel_spacing, scanner.pixel_spacing, scanner.slice_spacing]
            assert np.allclose(np.linalg.norm(series.affine[:3, :3], axis=0), steps)
            centre, _ = lesion(site.name, patients[series.uid])  # RAS mm, whatever the scanner's orientation
            bright = np.argwhere(series.volume > (TISSUE + LESION / 2) * scanner.scale).mean(axis=0)
            assert np.abs(series.affine[:3, :3] @ bright + series.affine[:3, 3] - centre).max() < 0.5
    assert read_series(sites[4] / "series")[0][0].volume.min() < -1024  # int16 pixels stored below 0 (air × 1.1)


def test_every_site_loads_in_ras_on_one_grid_with_the_lesion_in_place(sites):
    for site in sites:
        found = load(site, "series", "masks", SPACING, SIZE, WINDOW)
        assert found.images.shape == found.masks.shape == (4, 1, *SIZE) and found.skipped == {} and found.listed == 4
        assert found.images.min() >= 0 and found.images.max() <= 1 and set(np.unique(found.masks)) == {0.0, 1.0}
        patients = _patients(site / "series")
        for image, mask, uid in zip(found.images[:, 0], found.masks[:, 0], sorted(patients), strict=True):
            centre, radius = lesion(site.name, patients[uid])
            voxel = np.argwhere(mask > 0).mean(axis=0)
            millimetres = CENTRE * [-1, -1, 1] + (voxel - (np.array(SIZE) - 1) / 2) * SPACING  # RAS grid, same centre
            assert np.abs(millimetres - centre).max() < SPACING[0]
            assert mask.sum() * np.prod(SPACING) == pytest.approx(4 / 3 * np.pi * radius**3, rel=0.2)
            bright = np.argwhere(image > (TISSUE + LESION / 2 - WINDOW[0]) / (WINDOW[1] - WINDOW[0])).mean(axis=0)
            assert np.abs(bright - voxel).max() < 1
    mr = load(sites[0], "series", "masks", SPACING, SIZE, None)  # per-volume percentiles
    assert mr.images.min() == 0 and mr.images.max() == 1
    assert mr.images[mr.masks > 0].mean() > mr.images[mr.masks == 0].mean() + 0.2


def _break(kind: str, files: list[tuple[pydicom.Dataset, Path]], mask: Path) -> None:
    """Spoil one series (files in order along z) or its mask the way `kind` says."""
    _, path = files[len(files) // 2]
    dataset = pydicom.dcmread(path)
    if kind == "missing slice":
        path.unlink()
    elif kind == "duplicate":
        shutil.copy(path, path.with_name("copy-" + path.name))
    elif kind == "orientation":
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 0.98, 0.199]
    elif kind == "size":
        dataset.Rows, dataset.Columns, dataset.PixelData = 16, 16, np.zeros((16, 16), np.uint16).tobytes()
    elif kind == "pixel spacing":
        dataset.PixelSpacing = [1.0, 1.0]
    elif kind == "no position":
        del dataset.ImagePositionPatient
    elif kind == "too few":
        for _, other in files[5:]:
            other.unlink()
    elif kind == "no mask":
        mask.unlink()
    elif kind == "mask shape":
        image = nib.load(mask)
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[:, :, 1:], image.affine), mask)
    elif kind == "mask affine":
        image = nib.load(mask)
        shifted = image.affine.copy()
        shifted[0, 3] += 1.0  # 1 mm to the right
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), shifted), mask)
    elif kind == "mask unreadable":
        mask.write_bytes(b"not a NIfTI file")
    if kind in ("orientation", "size", "pixel spacing", "no position"):
        dataset.save_as(path)


BROKEN = {
    "missing slice": dicom_series.UNEVEN_SPACING, "duplicate": dicom_series.DUPLICATE_POSITIONS,
    "orientation": dicom_series.MIXED_ORIENTATIONS, "size": dicom_series.MIXED_SIZES,
    "pixel spacing": dicom_series.MIXED_PIXEL_SPACINGS, "no position": dicom_series.NO_GEOMETRY,
    "too few": dicom_series.TOO_FEW_SLICES, "no mask": dicom_series.NO_MASK,
    "mask shape": dicom_series.MASK_MISMATCH, "mask affine": dicom_series.MASK_MISMATCH,
    "mask unreadable": dicom_series.MASK_UNREADABLE,
}  # fmt: skip


def test_each_unusable_series_or_file_is_counted_with_its_reason_and_the_good_ones_load(tmp_path):
    site = _write(tmp_path, 4, len(BROKEN) + 2)
    good = load(site, "series", "masks", SPACING, SIZE, WINDOW)
    assert len(good.images) == len(BROKEN) + 2 and good.skipped == {}
    for kind, (uid, files) in zip(BROKEN, sorted(_slices(site / "series").items())):
        _break(kind, files, site / "masks" / f"{uid}.nii.gz")
    (site / "series" / "nested").mkdir()
    (site / "series" / "nested" / "notes.txt").write_text("not an image")
    found = load(site, "series", "masks", SPACING, SIZE, WINDOW)  # the cache sees the changed files
    expected: dict[str, int] = {"file: not a DICOM file": 1}
    for reason in BROKEN.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert found.skipped == dict(sorted(expected.items()))
    assert len(found.images) == len(found.masks) == 2 and found.listed == len(BROKEN) + 2
    assert read_series(site / "series", min_slices=6)[1][dicom_series.TOO_FEW_SLICES] == 1
    assert dicom_series.TOO_FEW_SLICES not in read_series(site / "series", min_slices=5)[1]


def test_missing_folders_and_folders_outside_the_site_are_refused(sites):
    with pytest.raises(DataError, match="images folder 'scans' not found in the site folder"):
        load(sites[0], "scans", "masks", SPACING, SIZE, WINDOW)
    with pytest.raises(DataError, match="masks folder 'labels' not found in the site folder"):
        load(sites[0], "series", "labels", SPACING, SIZE, WINDOW)
    with pytest.raises(DataError, match="'../h1/series' points outside the site folder"):
        load(sites[0], "../h1/series", "masks", SPACING, SIZE, WINDOW)
