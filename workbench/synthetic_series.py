"""A synthetic multi-scanner CT cohort for segmentation: one DICOM series and one lesion mask per patient.

Each patient is an ellipsoid body (soft tissue, ~40 HU, in air, ~-1000 HU) holding one spherical lesion
(radius 8–14 mm, ~120 HU above tissue, edges a little blurred) at a random place inside it. The anatomy is
drawn in patient coordinates (millimetres, DICOM LPS) around the same centre for every site, over a field of
view of about 96 × 96 × 64 mm, so volumes resampled to a common spacing agree. Each hospital's scanner differs
(pixel and slice spacing, intensity scale, noise, ImageOrientationPatient, slice order, stored pixel type), as
real sites do. Series are proper DICOM (CT Image Storage, explicit VR little endian) whose pseudonymous PatientID
matches the site's patient table; masks are NIfTI files `<SeriesInstanceUID>.nii.gz` on the series' own voxel
grid with its RAS affine. No real person is depicted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

FIELD_OF_VIEW = (96.0, 96.0, 64.0)
"""Millimetres across the rows, the columns and the slices (about: a whole number of voxels)."""
CENTRE = np.array([10.0, 30.0, -150.0])
"""The field of view's centre in patient coordinates (LPS mm), the same for every site."""
BODY = np.array([40.0, 32.0, 80.0])
"""The body ellipsoid's semi-axes (mm)."""
TISSUE, AIR, LESION = 40.0, -1000.0, 120.0
"""Hounsfield units: soft tissue, air, and the lesion's excess over tissue."""
EDGE = 0.7
"""Width (mm) of the blurred edges of the body and the lesion."""


@dataclass(frozen=True)
class SeriesScanner:
    manufacturer: str
    pixel_spacing: float
    """In-plane (mm), the same along rows and columns."""
    slice_spacing: float
    """Between slice centres (mm); also the SliceThickness written."""
    scale: float
    """Multiplies Hounsfield units (around 0)."""
    noise: float
    """Standard deviation of the added noise (HU)."""
    orientation: tuple[float, float, float, float, float, float]
    """ImageOrientationPatient: the row then the column direction cosines."""
    descending: bool
    """InstanceNumber runs with ImagePositionPatient z decreasing (feet-first order)."""
    signed: bool
    """Pixels stored as int16 (PixelRepresentation 1) rather than uint16."""


SERIES_SCANNERS = (
    SeriesScanner("Siemens (synthetic)", 1.5, 2.0, 1.0, 6.0, (1, 0, 0, 0, 1, 0), False, False),
    SeriesScanner("GE (synthetic)", 1.875, 2.5, 0.95, 8.0, (1, 0, 0, 0, 1, 0), True, True),
    SeriesScanner("Philips (synthetic)", 2.0, 3.0, 1.05, 5.0, (-1, 0, 0, 0, 1, 0), False, False),
    SeriesScanner("Canon (synthetic)", 2.5, 3.5, 0.9, 10.0, (1, 0, 0, 0, -1, 0), True, False),
    SeriesScanner("United Imaging (synthetic)", 3.0, 4.0, 1.1, 12.0, (-1, 0, 0, 0, -1, 0), False, True),
)


@dataclass(frozen=True)
class _Grid:
    """A series' voxel grid: array axes (column, row, slice), slices in order along the slice normal."""

    shape: tuple[int, int, int]
    lps: np.ndarray
    """4 × 4 voxel → LPS mm."""

    @property
    def ras(self) -> np.ndarray:
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.lps

    def points(self) -> np.ndarray:
        """LPS mm of every voxel centre, (3, *shape)."""
        index = np.indices(self.shape).reshape(3, -1)
        return (self.lps[:3, :3] @ index + self.lps[:3, 3:]).reshape(3, *self.shape)


def write_site(
    folder: Path, site: str, patients: pd.Series, scanner: SeriesScanner, seed: int = 0, shuffle: bool = True
) -> Path:
    """One CT series per patient under `folder/series/` (random file names written in shuffled order when
    `shuffle`, else `<patient>-<instance>.dcm`) and its lesion mask under `folder/masks/`."""
    key = int(hashlib.sha256(f"{site}/{seed}".encode()).hexdigest()[:8], 16)
    noise, names = np.random.default_rng(key), np.random.default_rng(key + 1)
    series, masks = folder / "series", folder / "masks"
    series.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    grid = _grid(scanner)
    points = grid.points()
    body = _body(points)
    slices = list(range(grid.shape[2]))  # k of InstanceNumber 1, 2, ...
    if (grid.lps[2, 2] < 0) != scanner.descending:
        slices.reverse()
    for patient in map(str, patients):
        ras, radius = lesion(site, patient, seed)
        distance = np.linalg.norm(points - (ras * [-1, -1, 1])[:, None, None, None], axis=0)  # in LPS
        share = 1.0 / (1.0 + np.exp(-(radius - distance) / EDGE))
        hounsfield = (AIR + (TISSUE - AIR) * body + LESION * share * body) * scanner.scale
        hounsfield += noise.normal(0.0, scanner.noise, grid.shape)
        stored = np.round(hounsfield + 1024)
        dtype = np.int16 if scanner.signed else np.uint16
        stored = np.clip(stored, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
        uids = [generate_uid(entropy_srcs=[site, str(seed), patient, part]) for part in ("study", "series", "frame")]
        dataset = _series_dataset(grid, scanner, patient, *uids)
        for number in names.permutation(len(slices)) if shuffle else range(len(slices)):
            k = slices[number]
            uid = generate_uid(entropy_srcs=[uids[1], str(k)])
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = uid
            dataset.InstanceNumber = int(number) + 1
            dataset.ImagePositionPatient = [_ds(v) for v in grid.lps[:3, :3] @ [0, 0, k] + grid.lps[:3, 3]]
            dataset.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # rows × columns
            name = f"{names.integers(2**48):012x}" if shuffle else f"{patient}-{number + 1:03d}.dcm"
            dataset.save_as(series / name, enforce_file_format=True)
        mask = nib.Nifti1Image((distance <= radius).astype(np.uint8), grid.ras)
        mask.header.set_xyzt_units("mm")
        nib.save(mask, masks / f"{uids[1]}.nii.gz")
    return series


def _grid(scanner: SeriesScanner) -> _Grid:
    row, column = np.array(scanner.orientation[:3], float), np.array(scanner.orientation[3:], float)
    steps = np.array([scanner.pixel_spacing, scanner.pixel_spacing, scanner.slice_spacing])
    shape = tuple(int(n) for n in np.round(np.array(FIELD_OF_VIEW) / steps))
    axes = np.stack([row, column, np.cross(row, column)], axis=1) * steps
    lps = np.eye(4)
    lps[:3, :3] = axes
    lps[:3, 3] = CENTRE - axes @ ((np.array(shape) - 1) / 2)
    return _Grid(shape, lps)


def _body(points: np.ndarray) -> np.ndarray:
    """How much of each voxel (LPS mm centres `points`) is body: 1 inside, 0 outside, blurred at the surface."""
    offset = (points - CENTRE[:, None, None, None]) / BODY[:, None, None, None]
    inside = (1.0 - np.sqrt((offset**2).sum(axis=0))) * BODY[:2].min()  # ~mm inside the surface
    return 1.0 / (1.0 + np.exp(-inside / EDGE))


def lesion(site: str, patient: str, seed: int = 0) -> tuple[np.ndarray, float]:
    """The centre (RAS mm) and radius (mm) of the lesion `write_site` draws for a patient: a sphere inside the body
    and the slices' span."""
    rng = np.random.default_rng(int(hashlib.sha256(f"{site}/{seed}/{patient}".encode()).hexdigest()[:8], 16))
    radius = rng.uniform(8.0, 14.0)
    reach = np.array([BODY[0] - radius - 3.0, BODY[1] - radius - 3.0, FIELD_OF_VIEW[2] / 2 - radius - 3.0])
    while True:
        offset = rng.uniform(-reach, reach)
        if (offset[:2] / reach[:2]) @ (offset[:2] / reach[:2]) <= 1.0:
            return (CENTRE + offset) * [-1, -1, 1], radius


def _series_dataset(grid: _Grid, scanner: SeriesScanner, patient: str, study: str, series: str, frame: str) -> Dataset:
    """A CT Image Storage dataset with what all of a series' slices share."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = CTImageStorage, ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.PatientID, ds.PatientName = patient, f"Pseudonym^{patient}"
    ds.Modality, ds.Manufacturer, ds.SeriesNumber = "CT", scanner.manufacturer, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [_ds(v) for v in scanner.orientation]
    ds.PixelSpacing = [_ds(scanner.pixel_spacing)] * 2
    ds.SliceThickness = _ds(scanner.slice_spacing)
    ds.Columns, ds.Rows = grid.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(scanner.signed)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
    return ds


def _ds(value: float) -> str:
    """A decimal string (DS) value: at most 16 characters."""
    return f"{float(value):.10g}"
