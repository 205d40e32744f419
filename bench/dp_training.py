"""What differential privacy costs: training time, memory and model quality.

1. Per-epoch time and peak memory of one site's local training, DP-SGD (Opacus, the nodes' own
   `train_round`) vs plain SGD, for the default imaging model and the table models.
2. Held-out AUC and accuracy of federated training (FedAvg over 5 synthetic hospitals, the
   nodes' DP training code) at ε ∈ {1, 3, 8, ∞} per site, next to centralized non-private
   training on the pooled rows.
3. The same for segmentation (3-D U-Net on CT series from 5 synthetic scanners, read by the
   nodes' series loader): time and memory DP vs plain, held-out Dice at ε ∈ {1, 3, 8, ∞}
   and centralized.

    python bench/dp_training.py [--quick] [--segmentation]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hospital_node import dicom_series, imaging
from hospital_node.training import (
    LocalData,
    averaged,
    loss_function,
    noise_multiplier,
    plain_epochs,
    plain_rate,
    scores,
    train_round,
)
from workbench import models, synthetic_imaging, synthetic_series
from workbench.training_spec import TrainingSpec

IMAGE = dict(task="image_classification", images="images", labels="images.csv", batch_size=64, learning_rate=0.5)
SEGMENTATION = dict(task="image_segmentation", images="series", masks="masks", spacing=(3.0, 3.0, 4.0),
                    volume_size=(32, 32, 16), window=(-100.0, 300.0), batch_size=20, learning_rate=2.0, clip=0.5,
                    local_epochs=3)  # fmt: skip


def spec(**fields) -> TrainingSpec:
    privacy = {"target_epsilon": fields.pop("epsilon", 3.0), "max_grad_norm": fields.pop("clip", 1.0)}
    return TrainingSpec.model_validate({"id": "bench", "privacy": privacy, **fields})


def cohort(folder: Path, sites: int, patients: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Synthetic hospitals written as DICOM and read back the way a node reads them."""
    data = []
    for k in range(sites):
        site = folder / f"site-{k}"
        ids = pd.Series([f"S{k}-{i:04d}" for i in range(patients)])
        synthetic_imaging.write_site(site, f"site-{k}", ids, synthetic_imaging.SCANNERS[k % 5], size=size)
        found = imaging.load(site, "images", "images.csv", (size, size))
        data.append((found.images, found.labels))
    return data


def series_cohort(folder: Path, sites: int, patients: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Synthetic CT series (one scanner per hospital) written as DICOM + NIfTI and read back by the nodes' loader."""
    data = []
    options = spec(**SEGMENTATION)
    for k in range(sites):
        site = folder / f"series-{k}"
        ids = pd.Series([f"C{k}-{i:04d}" for i in range(patients)])
        synthetic_series.write_site(site, f"series-{k}", ids, synthetic_series.SERIES_SCANNERS[k % 5])
        found = dicom_series.load(site, "series", "masks", options.spacing, options.volume_size, options.window)
        data.append((found.images, found.masks[:, 0].astype(np.int64)))
    return data


def measure(architecture: str, mode: str, arrays: Path, batch: int) -> dict[str, float]:
    """Seconds per epoch (median of 3 after a warm-up) and peak extra memory, in a fresh process."""
    command = [sys.executable, __file__, "--measure", architecture, mode, str(arrays), str(batch)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure_here(architecture: str, mode: str, arrays: Path, batch: int) -> None:
    """Child process: train epochs and print {"seconds", "peak_mib"} as JSON (peak resident set growth)."""
    warnings.simplefilter("ignore")
    loaded = np.load(arrays)
    x, y = torch.from_numpy(loaded["x"]), torch.from_numpy(loaded["y"])
    features = 0 if x.ndim >= 4 else x.shape[1]
    options = {4: IMAGE, 5: SEGMENTATION}.get(x.ndim) or {
        "task": "tabular_classification",
        "outcome": "y",
        "features": ["f"] * features,
    }
    training = spec(**{**options, "model": architecture, "batch_size": batch, "rounds": 1, "local_epochs": 1})
    sigma = noise_multiplier(training, len(y))[0]
    data = LocalData(x, y, x[:1], y[:1])
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (Linux)
    before = _status("VmRSS")
    seconds = []
    for _ in range(4):
        model = models.build(architecture, features)
        started = time.perf_counter()
        if mode == "plain":
            plain_epochs(model, x, y, batch, 0.1, criterion=loss_function(training))
        else:
            train_round(model, data, training, sigma, 0.0)
        seconds.append(time.perf_counter() - started)
    peak = (_status("VmHWM") - before) / 1024
    print(json.dumps({"seconds": float(np.median(seconds[1:])), "peak_mib": peak}))


def _status(field: str) -> int:
    """A memory figure of this process in KiB, from /proc/self/status."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def costs(folder: Path, name: str, x: np.ndarray, y: np.ndarray, architecture: str, batch: int) -> str:
    arrays = folder / f"{name}.npz"
    np.savez(arrays, x=x, y=y)
    plain, private = (measure(architecture, mode, arrays, batch) for mode in ("plain", "dp"))
    return (f"{architecture:<16} {len(y):>6} {batch:>5} {plain['seconds']:>13.3f} {private['seconds']:>10.3f} "
            f"{private['seconds'] / plain['seconds']:>6.2f} {plain['peak_mib']:>9.1f} {private['peak_mib']:>7.1f} "
            f"{private['peak_mib'] / max(plain['peak_mib'], 0.1):>8.2f}")  # fmt: skip


def federated(sites, test, architecture: str, rounds: int, epsilon: float | None, options=IMAGE) -> dict[str, float]:
    """FedAvg over the sites with the nodes' DP training (epsilon None: plain SGD)."""
    model = models.build(architecture)
    training = spec(**options, model=architecture, rounds=rounds, epsilon=epsilon or 1.0)
    for _ in range(rounds):
        states, weights = [], []
        for x, y in sites:
            local = models.build(architecture)
            local.load_state_dict(model.state_dict())
            xt, yt = torch.from_numpy(x), torch.from_numpy(y)
            if epsilon is None:
                plain_epochs(local, xt, yt, training.batch_size, plain_rate(training), training.local_epochs,
                             loss_function(training))  # fmt: skip
                state = local.state_dict()
            else:
                sigma = noise_multiplier(training, len(y))[0]
                state, _, _ = train_round(local, LocalData(xt, yt, xt[:1], yt[:1]), training, sigma, 0.0)
            states.append(state)
            weights.append(len(y))
        model.load_state_dict(averaged(states, weights))
    return scored(model, test, training)


def centralized(sites, test, architecture: str, epochs: int, options=IMAGE) -> dict[str, float]:
    model = models.build(architecture)
    training = spec(**options, model=architecture)
    x = torch.from_numpy(np.concatenate([s[0] for s in sites]))
    y = torch.from_numpy(np.concatenate([s[1] for s in sites]))
    for _ in range(epochs):
        plain_epochs(model, x, y, training.batch_size, plain_rate(training), criterion=loss_function(training))
    return scored(model, test, training)


def scored(model: torch.nn.Module, test, training: TrainingSpec) -> dict[str, float]:
    return scores(model, torch.from_numpy(test[0]), torch.from_numpy(test[1]), training)


def segmentation(folder: Path, patients: int, rounds: int) -> None:
    """Part 3: the U-Net's DP cost and its held-out Dice."""
    data = series_cohort(folder, 6, patients)
    sites, test = data[:5], data[5]
    print(f"\n# segmentation: 5 synthetic CT scanners x {patients} series, resampled to 3x3x4 mm, 32x32x16 voxels; "
          f"test: a 6th hospital's {len(test[1])}")  # fmt: skip
    x, y = np.concatenate([s[0] for s in sites]), np.concatenate([s[1] for s in sites])
    print(f"{'model':<16} {'rows':>6} {'batch':>5} {'plain s/epoch':>13} {'DP s/epoch':>10} {'time x':>6} "
          f"{'plain MiB':>9} {'DP MiB':>7} {'memory x':>8}")  # fmt: skip
    print(costs(folder, "unet", x, y, "unet", SEGMENTATION["batch_size"]), flush=True)
    print(f"# held-out Dice, unet, FedAvg {rounds} rounds x {SEGMENTATION['local_epochs']} local epochs, batch "
          f"{SEGMENTATION['batch_size']}, "
          f"DP: lr {SEGMENTATION['learning_rate']}, clip {SEGMENTATION['clip']}; non-private: lr "
          f"{plain_rate(spec(**SEGMENTATION)):g}")  # fmt: skip
    print(f"{'training':<28} {'Dice':>6} {'HD95 mm':>8}")
    for epsilon in (1.0, 3.0, 8.0, None):
        result = federated(sites, test, "unet", rounds, epsilon, SEGMENTATION)
        label = f"federated, eps = {epsilon:g}" if epsilon else "federated, non-private"
        print(f"{label:<28} {result['dice']:>6.3f} {result.get('hd95', float('nan')):>8.2f}", flush=True)
    result = centralized(sites, test, "unet", rounds * SEGMENTATION["local_epochs"], SEGMENTATION)
    print(f"{'centralized, non-private':<28} {result['dice']:>6.3f} {result.get('hd95', float('nan')):>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer patients and rounds (a smoke run)")
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--segmentation", action="store_true", help="only part 3 (segmentation)")
    args = parser.parse_args()
    if args.measure:
        architecture, mode, arrays, batch = args.measure
        return _measure_here(architecture, mode, Path(arrays), int(batch))
    patients, rounds, size = (120, 4, 32) if args.quick else (400, 15, 64)
    torch.manual_seed(0)
    warnings.simplefilter("ignore")  # Opacus' notes on secure RNG and hooks
    print(f"# DP training benchmark - Python {platform.python_version()}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, CPU")  # fmt: skip
    if not args.segmentation:
        classification(patients, rounds, size)
    with tempfile.TemporaryDirectory() as name:
        segmentation(Path(name), 24 if args.quick else 100, 4 if args.quick else 20)


def classification(patients: int, rounds: int, size: int) -> None:
    """Parts 1 and 2: the image and table models' DP cost, the default image model's held-out AUC."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        data = cohort(folder, 6, patients, size)
        sites, test = data[:5], data[5]
        print(f"# 5 synthetic hospitals x {patients} MR slices ({size}x{size}); test: a 6th hospital's {len(test[1])}")
        print("\n# one local epoch, DP-SGD (the nodes' train_round: Opacus hooks, Poisson sampling) vs plain SGD;")
        print(
            "# time: median of 3 epochs after a warm-up; memory: peak resident set above the start, fresh process each"
        )
        print(f"{'model':<16} {'rows':>6} {'batch':>5} {'plain s/epoch':>13} {'DP s/epoch':>10} {'time x':>6} "
              f"{'plain MiB':>9} {'DP MiB':>7} {'memory x':>8}")  # fmt: skip
        x, y = np.concatenate([s[0] for s in sites]), np.concatenate([s[1] for s in sites])
        print(costs(folder, "cnn", x, y, "cnn", 32))
        print(costs(folder, "cnn", x, y, "cnn", 64))
        print(costs(folder, "maxpool_cnn", x, y, "maxpool_cnn", 64))
        print(costs(folder, "densenet_small", x, y, "densenet_small", 64))
        print(costs(folder, "densenet121", x[:128], y[:128], "densenet121", 8))
        table = np.random.default_rng(0).normal(size=(20000, 10)).astype(np.float32)
        labels = (table[:, 0] + table[:, 1] > 0).astype(np.int64)
        print(costs(folder, "logistic", table, labels, "logistic", 64))
        print(costs(folder, "mlp", table, labels, "mlp", 64))
    print(f"\n# held-out quality, cnn (default), FedAvg {rounds} rounds x 1 local epoch, batch 64, lr 0.5, clip 1.0")
    print(f"{'training':<28} {'AUC':>6} {'accuracy':>8}")
    for epsilon in (1.0, 3.0, 8.0, None):
        result = federated(sites, test, "cnn", rounds, epsilon)
        label = f"federated, eps = {epsilon:g}" if epsilon else "federated, non-private"
        print(f"{label:<28} {result['auc']:>6.3f} {result['accuracy']:>8.3f}")
    result = centralized(sites, test, "cnn", rounds)
    print(f"{'centralized, non-private':<28} {result['auc']:>6.3f} {result['accuracy']:>8.3f}")


if __name__ == "__main__":
    main()
