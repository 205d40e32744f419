"""Labelled DICOM images from a site folder, read locally only and prepared with MONAI transforms.

The labels file names each image by `file` (path relative to the images folder) or by
`sop_instance_uid`, with a 0/1 `label`. Each image is read with pydicom (any transfer
syntax a decoder is installed for), reduced to one 2-D slice (the middle frame of a
multi-frame image; the mean of colour channels), put through its modality LUT, then scaled
to [0, 1] and resized with MONAI. A file that cannot be used is skipped and counted by reason;
nothing about an image but these counts ever leaves the node.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from monai.transforms import Compose, Resize, ScaleIntensity
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from analyses.contract import DataError

ATTRIBUTES_READ = (
    "PixelData", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation",
    "BitsAllocated", "BitsStored", "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "SOPInstanceUID",
)  # fmt: skip
"""The DICOM attributes the node reads (for the ethics review); patient attributes are never read."""


@dataclass
class ImageSet:
    images: np.ndarray
    """(N, 1, height, width) float32 in [0, 1]."""
    labels: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    """Reason → number of labelled files that could not be used."""

    @property
    def listed(self) -> int:
        return len(self.labels) + sum(self.skipped.values())


def load(site: Path, images: str, labels: str, size: tuple[int, int]) -> ImageSet:
    """Every labelled image of the site, prepared for training (cached per file versions)."""
    folder, table = _inside(site, images), _inside(site, labels)
    if not folder.is_dir():
        raise DataError(f"images folder '{images}' not found in the site folder")
    if not table.is_file():
        raise DataError(f"labels file '{labels}' not found in the site folder")
    stamp = (table.stat().st_mtime_ns, max((p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()), default=0))
    return _load(folder, table, tuple(size), stamp)


@functools.lru_cache(maxsize=16)  # a simulation process may serve every site of a study
def _load(folder: Path, table: Path, size: tuple[int, int], _stamp: tuple[int, int]) -> ImageSet:
    rows = _labels(table)
    paths = _paths(folder, rows)
    prepare = Compose([ScaleIntensity(minv=0.0, maxv=1.0), Resize(spatial_size=size)])
    images, labels, skipped = [], [], Counter()
    for path, label in zip(paths, rows["label"], strict=True):
        try:
            if path is None:
                raise FileNotFoundError
            if isinstance(path, Exception):
                raise path
            pixels = _pixels(path)
        except Exception as error:  # every unusable file is counted with its reason, never a crash
            skipped[_reason(error)] += 1
            continue
        images.append(np.asarray(prepare(pixels[None]), dtype=np.float32))
        labels.append(int(label))
    shape = (0, 1, *size)
    stack = np.stack(images) if images else np.zeros(shape, dtype=np.float32)
    return ImageSet(stack, np.asarray(labels, dtype=np.int64), dict(sorted(skipped.items())))


def _inside(site: Path, name: str) -> Path:
    path = (site / name).resolve()
    if not path.is_relative_to(site.resolve()):
        raise DataError(f"'{name}' points outside the site folder")
    return path


def _labels(table: Path) -> pd.DataFrame:
    try:
        rows = pd.read_csv(table)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{table.name} cannot be read as CSV ({error})") from None
    if "label" not in rows or not ({"file", "sop_instance_uid"} & set(rows.columns)):
        raise DataError(f"{table.name} needs a 'label' column and a 'file' or 'sop_instance_uid' column")
    bad = rows.loc[~rows["label"].isin([0, 1]), "label"]
    if len(bad):
        raise DataError(f"{table.name}: label must be 0 or 1 (found '{bad.iloc[0]}' at line {bad.index[0] + 2})")
    return rows


def _paths(folder: Path, rows: pd.DataFrame) -> list[Path | None | Exception]:
    """The file of each labelled image: by path, or found by its SOP Instance UID."""
    if "file" in rows:
        return [folder / str(name) for name in rows["file"]]
    index: dict[str, list[Path]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            uid = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"], force=True)
            index.setdefault(str(uid.SOPInstanceUID), []).append(path)
        except Exception:  # an unreadable file is only a problem if a label points at it
            continue
    found = [index.get(str(uid), []) for uid in rows["sop_instance_uid"]]
    return [paths[0] if len(paths) == 1 else AmbiguousUid() if paths else None for paths in found]


class AmbiguousUid(Exception):
    """Several files carry the SOP Instance UID a label names."""


def _pixels(path: Path) -> np.ndarray:
    """One 2-D float slice of a DICOM file."""
    dataset = pydicom.dcmread(path, force=True)
    meta = dataset.file_meta
    if "TransferSyntaxUID" not in meta:  # files without a meta header: infer how they were encoded
        implicit, little = dataset.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    pixels = apply_modality_lut(dataset.pixel_array, dataset).astype(np.float32)
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[frames // 2]
    if pixels.ndim == 3:
        pixels = pixels.mean(axis=-1)
    return pixels


def _reason(error: Exception) -> str:
    text = str(error)
    if isinstance(error, FileNotFoundError):
        return "listed in the labels file but missing"
    if isinstance(error, AmbiguousUid):
        return "several files share its SOP Instance UID"
    if isinstance(error, InvalidDicomError):
        return "not a DICOM file"
    if "Pixel Data" in text and "no" in text:
        return "no pixel data"
    if "less than expected" in text or "truncated" in text.lower():
        return "truncated pixel data"
    if "decompress" in text or "decode" in text or "plugins" in text:
        return "unsupported transfer syntax (no decoder installed)"
    if "invalid literal" in text:
        return "malformed element value"
    return f"unreadable DICOM ({type(error).__name__})"
