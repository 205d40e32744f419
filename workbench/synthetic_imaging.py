"""A synthetic multi-hospital DICOM cohort: one MR slice per patient, a lesion present or not.

Background anatomy comes from MONAI's `create_test_image_2d` (random ellipses); a lesion is a
small bright blob. Each hospital's scanner differs (intensity scale, noise, contrast, pixel
spacing, manufacturer), as real sites do. Files are proper DICOM (MR Image Storage, explicit
VR little endian) whose pseudonymous PatientID matches the site's patient table. No real
person is depicted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from monai.data.synthetic import create_test_image_2d
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


@dataclass(frozen=True)
class Scanner:
    manufacturer: str
    scale: float
    noise: float
    gamma: float
    spacing: float


SCANNERS = (
    Scanner("Siemens (synthetic)", 1200.0, 0.04, 1.0, 0.78),
    Scanner("GE (synthetic)", 900.0, 0.07, 0.85, 0.94),
    Scanner("Philips (synthetic)", 1500.0, 0.05, 1.15, 0.70),
    Scanner("Canon (synthetic)", 1000.0, 0.09, 0.9, 1.02),
    Scanner("Siemens (synthetic)", 1100.0, 0.06, 1.05, 0.86),
)


def write_site(
    folder: Path, site: str, patients: pd.Series, scanner: Scanner, size: int = 32, seed: int = 0, lesion: float = 0.5
) -> Path:
    """DICOM files under `folder/images/` and `folder/images.csv` (file, patient_id, label) for `patients`;
    `lesion` is a lesion's peak brightness over the anatomy's 0.3–0.7."""
    rng = np.random.default_rng(int(hashlib.sha256(f"{site}/{seed}".encode()).hexdigest()[:8], 16))
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid(entropy_srcs=[site, "study"])
    series_uid = generate_uid(entropy_srcs=[site, "series"])
    rows = []
    for number, patient in enumerate(patients):
        label = int(rng.random() < 0.5)
        pixels = _slice(rng, size, label, scanner, lesion)
        name = f"{patient}.dcm"
        uid = generate_uid(entropy_srcs=[site, str(patient)])
        _dataset(pixels, str(patient), scanner, study_uid, series_uid, uid, number + 1).save_as(
            images / name, enforce_file_format=True
        )
        rows.append({"file": name, "patient_id": patient, "label": label})
    pd.DataFrame(rows).to_csv(folder / "images.csv", index=False)
    return images


def _slice(rng: np.random.Generator, size: int, lesion: int, scanner: Scanner, peak: float) -> np.ndarray:
    smallest = max(1, size // 16)
    anatomy, _ = create_test_image_2d(size, size, num_objs=6, rad_min=smallest, rad_max=max(smallest + 1, size // 4),
                                      noise_max=0.0, random_state=np.random.RandomState(rng.integers(2**31)))  # fmt: skip
    image = 0.3 + 0.4 * anatomy / max(float(anatomy.max()), 1.0)
    if lesion:
        cy, cx = rng.uniform(size * 0.25, size * 0.75, size=2)
        radius = rng.uniform(size * 0.06, size * 0.1)
        yy, xx = np.mgrid[:size, :size]
        image += peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    image = np.clip(image + rng.normal(0, scanner.noise, image.shape), 0, None) ** scanner.gamma
    return np.round(image * scanner.scale).astype(np.uint16)


def _dataset(
    pixels: np.ndarray, patient: str, scanner: Scanner, study: str, series: str, uid: str, number: int
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName = patient, f"Pseudonym^{patient}"
    ds.Modality, ds.Manufacturer, ds.InstanceNumber = "MR", scanner.manufacturer, number
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [scanner.spacing, scanner.spacing]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    return ds
