"""DICOM series read as 3-D volumes at the node, with their lesion masks, prepared with MONAI transforms.

Every file under the images folder (any names, any nesting, any order) is read with pydicom, geometry and pixel
attributes only, and grouped by SeriesInstanceUID. Slices are ordered by ImagePositionPatient projected on the
slice normal (the cross product of the ImageOrientationPatient direction cosines), never by file name or
InstanceNumber. A volume's array axes are (column, row, slice), its affine maps voxels to RAS+ millimetres (the
NIfTI convention: DICOM LPS flipped in x and y). Masks are NIfTI files `<SeriesInstanceUID>.nii.gz` (or `.nii`)
on the series' own voxel grid, labels > 0 = lesion. A file or a series that cannot be used is skipped and counted
by reason; nothing about an image but these counts ever leaves the node.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    Orientationd,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from analyses.contract import DataError
from hospital_node.imaging import _inside, _reason

ATTRIBUTES_READ = (
    "SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
    "PixelData", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
    "PixelRepresentation", "RescaleSlope", "RescaleIntercept",
)  # fmt: skip
"""The DICOM attributes the node reads (for the ethics review): geometry and pixels, never a patient attribute."""

MIN_SLICES = 8
FILE = "file: "
"""Prefix of the reasons that count files rather than series."""
NO_SERIES_UID = FILE + "no SeriesInstanceUID"
NOT_A_SLICE = FILE + "not a single-frame greyscale image"
NO_GEOMETRY = "no ImagePositionPatient, ImageOrientationPatient or PixelSpacing"
MIXED_ORIENTATIONS = "mixed slice orientations"
MIXED_SIZES = "mixed image sizes"
MIXED_PIXEL_SPACINGS = "mixed pixel spacings"
TOO_FEW_SLICES = "too few slices"
DUPLICATE_POSITIONS = "duplicate slice positions"
UNEVEN_SPACING = "uneven slice spacing (missing slices)"
NO_MASK = "no mask"
MASK_UNREADABLE = "mask cannot be read"
MASK_MISMATCH = "mask does not match its series' geometry"

ORIENTATION_TOLERANCE = 1e-4
"""Direction cosines (and pixel spacings, mm) within this are equal."""
SPACING_TOLERANCE = 0.1
"""A gap between slices more than this fraction away from the median gap makes the spacing uneven."""
DUPLICATE_GAP = 1e-3
"""Slices closer than this (mm) along the normal share a position."""
MASK_TOLERANCE = 1e-3
"""A mask's affine must match its series' within this (mm)."""


@dataclass
class Series:
    uid: str
    volume: np.ndarray
    """(columns, rows, slices) float32, after the modality LUT (e.g. Hounsfield units)."""
    affine: np.ndarray
    """4 × 4, voxel → RAS+ mm."""
    files: int


@dataclass
class VolumeSet:
    images: np.ndarray
    """(N, 1, X, Y, Z) float32 in [0, 1], RAS orientation."""
    masks: np.ndarray
    """(N, 1, X, Y, Z) float32 0/1, on the images' grid."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Reason → number of series (files, for reasons starting with `FILE`) that could not be used."""

    @property
    def listed(self) -> int:
        """Usable and skipped series."""
        return len(self.images) + sum(n for reason, n in self.skipped.items() if not reason.startswith(FILE))


class _Unusable(Exception):
    """A file that is DICOM but not a slice of a volume; the message is its reason."""


@dataclass
class _Slice:
    position: np.ndarray | None
    orientation: np.ndarray | None
    spacing: np.ndarray | None
    pixels: np.ndarray


def read_series(folder: Path, min_slices: int = MIN_SLICES) -> tuple[list[Series], dict[str, int]]:
    """Every series under `folder` as a volume, and reason → number of series (or files) skipped."""
    groups: dict[str, list[_Slice]] = {}
    skipped: Counter[str] = Counter()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            uid, piece = _read(path)
        except _Unusable as error:
            skipped[str(error)] += 1
            continue
        except Exception as error:  # every unusable file is counted with its reason, never a crash
            skipped[FILE + _reason(error)] += 1
            continue
        groups.setdefault(uid, []).append(piece)
    found = []
    for uid, slices in sorted(groups.items()):
        series = _assemble(uid, slices, min_slices)
        if isinstance(series, str):
            skipped[series] += 1
        else:
            found.append(series)
    return found, dict(sorted(skipped.items()))


def _read(path: Path) -> tuple[str, _Slice]:
    """A file's SeriesInstanceUID and slice; only `ATTRIBUTES_READ` are read."""
    dataset = pydicom.dcmread(path, specific_tags=list(ATTRIBUTES_READ), force=True)
    if not any(keyword in dataset for keyword in ATTRIBUTES_READ):
        raise InvalidDicomError(f"{path.name} holds none of the attributes read")
    meta = dataset.file_meta
    if "TransferSyntaxUID" not in meta:  # files without a meta header: infer how they were encoded
        implicit, little = dataset.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    pixels = dataset.pixel_array
    if int(dataset.get("NumberOfFrames") or 1) > 1 or pixels.ndim != 2:
        raise _Unusable(NOT_A_SLICE)
    if not dataset.get("SeriesInstanceUID"):
        raise _Unusable(NO_SERIES_UID)
    geometry = [dataset.get(k) for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")]
    position, orientation, spacing = (
        np.array(value, dtype=float) if value is not None and len(value) == n else None
        for value, n in zip(geometry, (3, 6, 2), strict=True)
    )
    pixels = apply_modality_lut(pixels, dataset).astype(np.float32)
    return str(dataset.SeriesInstanceUID), _Slice(position, orientation, spacing, pixels)


def _assemble(uid: str, slices: list[_Slice], min_slices: int) -> Series | str:
    """The series' volume, or the reason it is not one."""
    if any(s.position is None or s.orientation is None or s.spacing is None for s in slices):
        return NO_GEOMETRY
    first = slices[0]
    if any(not np.allclose(s.orientation, first.orientation, rtol=0, atol=ORIENTATION_TOLERANCE) for s in slices):
        return MIXED_ORIENTATIONS
    if any(s.pixels.shape != first.pixels.shape for s in slices):
        return MIXED_SIZES
    if any(not np.allclose(s.spacing, first.spacing, rtol=0, atol=ORIENTATION_TOLERANCE) for s in slices):
        return MIXED_PIXEL_SPACINGS
    if len(slices) < min_slices:
        return TOO_FEW_SLICES
    row, column = first.orientation[:3], first.orientation[3:]
    depth = np.array([s.position @ np.cross(row, column) for s in slices])
    order = np.argsort(depth, kind="stable")
    gaps = np.diff(depth[order])
    if (gaps < DUPLICATE_GAP).any():
        return DUPLICATE_POSITIONS
    if (np.abs(gaps - np.median(gaps)) > SPACING_TOLERANCE * np.median(gaps)).any():
        return UNEVEN_SPACING
    ordered = [slices[i] for i in order]
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row * first.spacing[1], column * first.spacing[0]
    lps[:3, 2] = (ordered[-1].position - ordered[0].position) / (len(ordered) - 1)
    lps[:3, 3] = ordered[0].position
    volume = np.stack([s.pixels.T for s in ordered], axis=-1)
    return Series(uid, volume, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, len(slices))


def load(
    site: Path,
    images: str,
    masks: str,
    spacing: tuple[float, float, float],
    size: tuple[int, int, int],
    window: tuple[float, float] | None,
) -> VolumeSet:
    """Every series with its mask, in RAS at `spacing` mm, scaled to [0, 1] (through `window`, else between the
    volume's 1st and 99th percentiles) and padded or cropped to `size` (cached per file versions)."""
    folder, labels = _inside(site, images), _inside(site, masks)
    if not folder.is_dir():
        raise DataError(f"images folder '{images}' not found in the site folder")
    if not labels.is_dir():
        raise DataError(f"masks folder '{masks}' not found in the site folder")
    limits = None if window is None else (float(window[0]), float(window[1]))
    stamp = (_stamp(folder), _stamp(labels))
    return _load(folder, labels, tuple(map(float, spacing)), tuple(map(int, size)), limits, stamp)


def _stamp(folder: Path) -> tuple[int, int]:
    """Changes when a file under `folder` is added, removed or rewritten."""
    paths = [folder, *folder.rglob("*")]
    return len(paths), max(p.stat().st_mtime_ns for p in paths)


@functools.lru_cache(maxsize=16)  # a simulation process may serve every site of a study
def _load(
    folder: Path,
    labels: Path,
    spacing: tuple[float, ...],
    size: tuple[int, ...],
    window: tuple[float, float] | None,
    _version: tuple[tuple[int, int], tuple[int, int]],
) -> VolumeSet:
    found, reasons = read_series(folder)
    skipped = Counter(reasons)
    prepare = _transforms(spacing, size, window)
    images, masks = [], []
    for series in found:
        mask = _mask(labels, series)
        if isinstance(mask, str):
            skipped[mask] += 1
            continue
        affine = series.affine
        item = prepare(
            {"image": MetaTensor(series.volume[None], affine=affine), "mask": MetaTensor(mask, affine=affine)}
        )
        images.append(np.asarray(item["image"], dtype=np.float32))
        masks.append(np.asarray(item["mask"], dtype=np.float32))
    empty = np.zeros((0, 1, *size), dtype=np.float32)
    return VolumeSet(
        np.stack(images) if images else empty, np.stack(masks) if masks else empty.copy(), dict(sorted(skipped.items()))
    )


def _transforms(spacing: tuple[float, ...], size: tuple[int, ...], window: tuple[float, float] | None) -> Compose:
    keys = ["image", "mask"]
    if window is None:
        scale = ScaleIntensityRangePercentilesd("image", lower=1, upper=99, b_min=0.0, b_max=1.0, clip=True)
    else:
        scale = ScaleIntensityRanged("image", a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True)
    return Compose(
        [
            Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(keys, pixdim=spacing, mode=("bilinear", "nearest"), dtype=np.float32),
            scale,
            ResizeWithPadOrCropd(keys, spatial_size=size),
        ]
    )


def _mask(folder: Path, series: Series) -> np.ndarray | str:
    """The series' mask as (1, X, Y, Z) 0/1, or the reason it cannot be used."""
    path = next((p for p in (folder / f"{series.uid}.nii.gz", folder / f"{series.uid}.nii") if p.is_file()), None)
    if path is None:
        return NO_MASK
    try:
        image = nib.load(path)
        labels = np.asanyarray(image.dataobj)
    except Exception:  # a damaged mask is counted, never a crash
        return MASK_UNREADABLE
    if labels.shape != series.volume.shape or not np.allclose(image.affine, series.affine, rtol=0, atol=MASK_TOLERANCE):
        return MASK_MISMATCH
    return (labels > 0).astype(np.float32)[None]
