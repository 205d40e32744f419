"""Local training at a site with sample-level differential privacy (Opacus DP-SGD).

Each round: load the global weights, train `local_epochs` with Poisson-sampled batches,
per-sample gradients clipped to `max_grad_norm` and Gaussian noise whose multiplier is chosen
so that all the training's rounds together reach the study's target ε at the site. FedProx's
proximal pull towards the global weights is applied as a separate, data-independent step (so it
costs no privacy). Weights go back without Opacus' `_module.` prefixes. A segmentation's sample is
one patient's whole volume (its DICOM series), so the guarantee is per patient, not per slice; its
loss is Dice + cross-entropy and its evaluation Dice and HD95 per held-out volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants.utils import get_noise_multiplier
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from analyses import columns as col
from analyses.disclosure import Refused
from hospital_node import dicom_series, imaging, population
from hospital_node.privacy_ledger import History, epsilon
from hospital_node.site import Site
from workbench.protocol import Protocol
from workbench.training_spec import TrainingSpec


@dataclass
class LocalData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    skipped: dict[str, int] = field(default_factory=dict)
    """Image task: unusable files (segmentation: series) by reason."""


def device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def local_data(site: Site, protocol: Protocol, spec: TrainingSpec, mean: list[float], sd: list[float]) -> LocalData:
    """The site's rows for this training, split (always the same way) into training and validation."""
    skipped: dict[str, int] = {}
    if spec.task != "tabular_classification":
        x, y, skipped = _images(site, spec)
    else:
        rows = col.complete_cases(population.cohort(site, protocol).rows, spec.columns())
        y = col.events(rows, spec.outcome or "").astype(np.int64)
        x = np.stack([col.numeric(rows, name) for name in spec.features], axis=1)
        x = ((x - np.asarray(mean)) / np.asarray(sd)).astype(np.float32)
    if len(y) < 2:
        raise Refused(f"only {len(y)} usable rows; training needs at least 2")
    order = np.random.default_rng(spec.seed).permutation(len(y))
    held_out = max(1, int(round(spec.validation_fraction * len(y))))
    val, train = order[:held_out], order[held_out:]
    tensor = torch.from_numpy
    return LocalData(tensor(x[train]), tensor(y[train]), tensor(x[val]), tensor(y[val]), skipped)


def _images(site: Site, spec: TrainingSpec) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """An image task's inputs, targets (labels or mask volumes) and unusable items by reason; refused when too
    many cannot be used."""
    if spec.task == "image_classification":
        found = imaging.load(site.path, spec.images or "", spec.labels or "", spec.image_size)
        x, y, what = found.images, found.labels, "labelled images"
    else:
        found = dicom_series.load(site.path, spec.images or "", spec.masks or "", spec.spacing, spec.volume_size,
                                  spec.window)  # fmt: skip
        x, y, what = found.images, found.masks[:, 0].astype(np.int64), "series"
    unusable = sum(found.skipped.values())
    if found.listed and unusable / found.listed > spec.max_unreadable:
        reasons = ", ".join(f"{count} {reason}" for reason, count in found.skipped.items())
        raise Refused(f"{unusable} of {found.listed} {what} cannot be used ({reasons}); "
                      f"more than max_unreadable = {spec.max_unreadable:g}")  # fmt: skip
    return x, y, found.skipped


def noise_multiplier(spec: TrainingSpec, rows: int) -> tuple[float, float, int]:
    """Noise multiplier, sampling rate and steps per round that reach the target ε after all rounds."""
    batches = math.ceil(rows / spec.batch_size)  # Opacus samples each row with rate 1 / batches per step
    rate, steps = 1.0 / batches, spec.local_epochs * batches
    target, delta = spec.privacy.target_epsilon, spec.privacy.delta
    sigma = float(get_noise_multiplier(target_epsilon=target, target_delta=delta, sample_rate=rate,
                                       steps=steps * spec.rounds, accountant="rdp"))  # fmt: skip
    while epsilon([(sigma, rate, steps * spec.rounds)], delta) > target:  # Opacus' search stops within a tolerance
        sigma *= 1.01
    return sigma, rate, steps


def train_round(
    model: nn.Module, data: LocalData, spec: TrainingSpec, sigma: float, proximal_mu: float
) -> tuple[dict[str, torch.Tensor], History, float]:
    """One round of DP-SGD; the new weights, this round's privacy history and the mean training loss."""
    target = device()
    model.to(target).train()
    anchor = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.learning_rate)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=spec.batch_size)
    engine = PrivacyEngine(accountant="rdp")
    private, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma,
        max_grad_norm=spec.privacy.max_grad_norm, poisson_sampling=True,
    )  # fmt: skip
    criterion = loss_function(spec)
    losses = []
    for _ in range(spec.local_epochs):
        for inputs, labels in loader:
            optimizer.zero_grad()
            outputs = private(inputs.to(target))
            # An empty Poisson batch still takes a (noise-only) step, so the accounting holds.
            loss = criterion(outputs, labels.to(target)) if len(labels) else outputs.sum() * 0.0
            loss.backward()
            optimizer.step()
            if len(labels):
                losses.append(loss.item())
            if proximal_mu:
                with torch.no_grad():
                    for weight, start in zip(model.parameters(), anchor, strict=True):
                        weight -= spec.learning_rate * proximal_mu * (weight - start.to(target))
    history = [(float(s), float(q), int(n)) for s, q, n in engine.accountant.history]
    state = {name: value.detach().cpu() for name, value in model.state_dict().items()}
    return state, history, float(np.mean(losses)) if losses else float("nan")


def loss_function(spec: TrainingSpec) -> nn.Module:
    """Cross-entropy; for a segmentation Dice + cross-entropy, each a mean over the batch's samples."""
    if spec.task != "image_segmentation":
        return nn.CrossEntropyLoss()
    from monai.losses import DiceCELoss

    return _Unsqueezed(DiceCELoss(softmax=True, to_onehot_y=True))


class _Unsqueezed(nn.Module):
    """MONAI's losses take the label map with a channel axis."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(outputs, labels[:, None])


def plain_rate(spec: TrainingSpec) -> float:
    """The step size of the non-private reference training: a segmentation's unclipped gradients are larger than
    DP-SGD's clipped ones, so it takes half the study's step."""
    return spec.learning_rate * (0.5 if spec.task == "image_segmentation" else 1.0)


def plain_epochs(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, lr: float, epochs: int = 1,
    criterion: nn.Module | None = None,
) -> None:  # fmt: skip
    """Plain minibatch SGD, no clipping and no noise: the non-private reference DP training is compared with."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    criterion = criterion or nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for inputs, labels in DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True):
            optimizer.zero_grad()
            criterion(model(inputs), labels).backward()
            optimizer.step()


def averaged(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    """FedAvg: the sites' weights averaged, each site weighted by its training rows."""
    return {key: sum(state[key] * w for state, w in zip(states, weights)) / sum(weights) for key in states[0]}


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Loss, accuracy and ROC AUC (NaN unless both classes are present) of the model on (x, y)."""
    target = device()
    model.to(target).eval()
    with torch.no_grad():
        logits = model(x.to(target)).cpu()
    loss = float(nn.functional.cross_entropy(logits, y))
    score = torch.softmax(logits, dim=1)[:, 1].numpy()
    labels = y.numpy()
    metrics = {"loss": loss, "accuracy": float((logits.argmax(dim=1) == y).float().mean()), "auc": float("nan")}
    positives, negatives = int(labels.sum()), int(len(labels) - labels.sum())
    if positives and negatives:
        ranks = stats.rankdata(score)
        metrics["auc"] = float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))
    return metrics


def scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: TrainingSpec) -> dict[str, float]:
    """The held-out metrics of the training's task: `evaluate`, or `evaluate_segmentation`."""
    if spec.task == "image_segmentation":
        return evaluate_segmentation(model, x, y, spec)
    return evaluate(model, x, y)


def evaluate_segmentation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: TrainingSpec) -> dict[str, float]:
    """Dice + CE loss, and over the held-out volumes the mean and SD of Dice (a volume without lesion that the
    model leaves empty scores 1) and the mean HD95 in mm where both contours exist (absent if none does)."""
    from monai.metrics import compute_dice, compute_hausdorff_distance
    from monai.networks.utils import one_hot

    target = device()
    model.to(target).eval()
    with torch.no_grad():
        logits = torch.cat([model(part.to(target)).cpu() for part in torch.split(x, 4)])
    loss = float(loss_function(spec)(logits, y))
    predicted = one_hot(logits.argmax(dim=1, keepdim=True), num_classes=2)
    truth = one_hot(y[:, None], num_classes=2)
    dice = compute_dice(predicted, truth, include_background=False, ignore_empty=False)[:, 0].numpy()
    distance = compute_hausdorff_distance(predicted, truth, include_background=False, percentile=95,
                                          spacing=list(spec.spacing))[:, 0].numpy()  # fmt: skip
    finite = distance[np.isfinite(distance)]
    metrics = {"loss": loss, "dice": float(dice.mean()), "dice-sd": float(dice.std(ddof=1)) if len(dice) > 1 else 0.0}
    return metrics | ({"hd95": float(finite.mean())} if len(finite) else {})
