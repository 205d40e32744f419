"""The `[[training]]` blocks of a protocol: federated model training with differential privacy."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from analyses.disclosure import Control, Item

IMAGE_MODELS = ("cnn", "maxpool_cnn", "densenet_small", "densenet121")
SEGMENTATION_MODELS = ("unet",)
TABLE_MODELS = ("logistic", "mlp")
IMAGE_PARAMETERS = {"cnn": 1386, "maxpool_cnn": 714, "densenet_small": 13586, "densenet121": 6949634, "unet": 28922}
"""Trainable parameters of each image model (`workbench.models` builds them; a test checks these counts), so a
steward's review can state what a round sends without importing torch."""


def parameter_count(architecture: str, features: int) -> int:
    """Trainable parameters of `architecture` (what a site sends per round), without building it."""
    if architecture == "logistic":
        return (features + 1) * 2
    if architecture == "mlp":
        return (features + 1) * 32 + (32 + 1) * 2
    return IMAGE_PARAMETERS[architecture]


class TrainingPrivacy(BaseModel):
    """Sample-level DP-SGD (Opacus) per site, accounted over the whole training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_epsilon: float = Field(gt=0, description="per site, for all rounds of this training")
    delta: float = Field(1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0, description="per-sample gradient clipping norm")


class TrainingSpec(BaseModel):
    """One federated training: a model, its data at each site, rounds, strategy and privacy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    task: Literal["image_classification", "image_segmentation", "tabular_classification"]
    model: str | None = Field(
        None,
        description="image: cnn (default), maxpool_cnn, densenet_small, densenet121; segmentation: unet "
        "(3-D, default); table: logistic (default), mlp",
    )
    images: str | None = Field(
        None, description="image task: folder of DICOM files in each site; segmentation: folder of DICOM series"
    )
    labels: str | None = Field(None, description="image task: CSV with file or sop_instance_uid, and label (0/1)")
    image_size: tuple[int, int] = (64, 64)
    masks: str | None = Field(None, description="segmentation: folder of NIfTI masks named <SeriesInstanceUID>.nii.gz")
    spacing: tuple[float, float, float] = Field(
        (2.0, 2.0, 2.0), description="segmentation: voxel size (mm) to resample to"
    )
    volume_size: tuple[int, int, int] = Field(
        (48, 48, 32), description="segmentation: voxels (x, y, z) after resampling"
    )
    window: tuple[float, float] | None = Field(
        None, description="segmentation: intensity window (CT Hounsfield units); none = MR percentile 1–99 scaling"
    )
    outcome: str | None = Field(None, description="table task: 0/1 column of the cohort table")
    features: list[str] = Field(default_factory=list, description="table task: numeric columns")
    rounds: int = Field(5, ge=1, le=1000)
    local_epochs: int = Field(1, ge=1, le=100)
    batch_size: int = Field(64, ge=1, description="DP-SGD amortizes clipping and noise over larger batches")
    learning_rate: float = Field(0.1, gt=0)
    strategy: Literal["fedavg", "fedprox", "fedadam"] = "fedavg"
    proximal_mu: float = Field(0.1, ge=0, description="FedProx: weight of the proximal term")
    server_learning_rate: float = Field(0.1, gt=0, description="FedAdam: server step size")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="share of each site's rows held out for evaluation")
    max_unreadable: float = Field(
        0.2, ge=0, lt=1, description="image task: refuse if more files than this cannot be read"
    )
    seed: int = 0
    privacy: TrainingPrivacy

    @model_validator(mode="after")
    def _fits_task(self) -> TrainingSpec:
        if self.task == "image_classification":
            if not self.images or not self.labels:
                raise ValueError("an image_classification needs 'images' (a folder) and 'labels' (a CSV file)")
            if self.model not in (None, *IMAGE_MODELS):
                raise ValueError(f"model '{self.model}' is not an image model ({', '.join(IMAGE_MODELS)})")
        elif self.task == "image_segmentation":
            if not self.images or not self.masks:
                raise ValueError(
                    "an image_segmentation needs 'images' (a folder of DICOM series) and 'masks' (a folder)"
                )
            if self.model not in (None, *SEGMENTATION_MODELS):
                raise ValueError(f"model '{self.model}' is not a segmentation model ({', '.join(SEGMENTATION_MODELS)})")
            if self.window is not None and self.window[0] >= self.window[1]:
                raise ValueError("window must be [low, high] with low < high")
            if min(self.spacing) <= 0:
                raise ValueError("spacing must be three positive voxel sizes in mm")
            if any(n < 8 or n % 4 for n in self.volume_size):
                raise ValueError("volume_size must be three multiples of 4, each at least 8 (the U-Net halves twice)")
        else:
            if not self.outcome or not self.features:
                raise ValueError("a tabular_classification needs 'outcome' and 'features'")
            if self.model not in (None, *TABLE_MODELS):
                raise ValueError(f"model '{self.model}' is not a table model ({', '.join(TABLE_MODELS)})")
        return self

    @property
    def architecture(self) -> str:
        return self.model or {"image_classification": "cnn", "image_segmentation": "unet"}.get(self.task, "logistic")

    @property
    def scaling_id(self) -> str:
        """Id of the implicit describe analysis that gives a table training its features' pooled mean and sd."""
        return f"{self.id}.features"

    def columns(self) -> list[str]:
        """Cohort columns this training reads (none for images: they come with their labels file)."""
        return [self.outcome, *self.features] if self.task == "tabular_classification" else []


MANIFEST = (
    Item("train", "<parameter tensors>", "the model's own tensor shapes", "the model's weights after this "
         "round's local DP-SGD (float32)"),
    Item("train", "num-examples", "(1,)", "training rows used this round"),
    Item("train", "train-loss", "(1,)", "mean training loss of the last local epoch"),
    Item("train", "epsilon", "(1,)", "ε this training has spent at the site so far"),
    Item("train", "skipped", "text", "image tasks: unreadable DICOM files or rejected series per reason (counts)"),
    Item("evaluate", "num-examples", "(1,)", "held-out rows (segmentation: volumes)", Control.MINIMUM),
    Item("evaluate", "loss", "(1,)", "held-out loss of the global model (cross-entropy; segmentation: Dice + CE)"),
    Item("evaluate", "accuracy", "(1,)", "classification: held-out accuracy at the 0.5 threshold"),
    Item("evaluate", "auc", "(1,)", "classification: held-out ROC AUC"),
    Item("evaluate", "dice", "(1,)", "segmentation: mean Dice over the held-out volumes"),
    Item("evaluate", "dice-sd", "(1,)", "segmentation: SD of the held-out volumes' Dice (for the pooled 95% CI)"),
    Item("evaluate", "hd95", "(1,)", "segmentation: mean 95th-percentile Hausdorff distance (mm) over the held-out "
         "volumes where both contours exist"),
)  # fmt: skip
"""What a site returns per training round and per evaluation (the node's train handler sends these)."""


def manifest(task: str) -> tuple[Item, ...]:
    """The items a site returns for a training of `task`: `MANIFEST` without the other tasks' metrics."""
    other = "classification:" if task == "image_segmentation" else "segmentation:"
    return tuple(
        item
        for item in MANIFEST
        if not item.meaning.startswith(other)
        and not (task == "tabular_classification" and item.meaning.startswith("image tasks:"))
    )
