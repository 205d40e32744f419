"""Trained model files: final and best weights, and a model card saying what they are."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from workbench.training import TrainingRun
from workbench.training_spec import TrainingSpec

UNITS = {"image_classification": "one image", "image_segmentation": "one patient's volume (DICOM series)",
         "tabular_classification": "one cohort row"}  # fmt: skip
"""What DP-SGD's sample, the unit the guarantee protects, is for each task."""


def write(folder: Path, record: TrainingRun, results: dict[str, Any]) -> None:
    """`final.pt`, `best.pt` (PyTorch state dicts), `model_card.json` and `model_card.md`, atomically."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".model-"))
    try:
        torch.save(record.final, staging / "final.pt")
        torch.save(record.best or record.final, staging / "best.pt")
        card = _card(record, results)
        (staging / "model_card.json").write_text(json.dumps(card, indent=1, default=str), encoding="utf-8")
        (staging / "model_card.md").write_text(_markdown(card), encoding="utf-8")
        staging.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _card(record: TrainingRun, results: dict[str, Any]) -> dict[str, Any]:
    spec = record.spec
    examples = {site: int(m["num-examples"]) for r in record.rounds[-1:] for site, m in r["train"]["sites"].items()}
    return {
        "model": spec.id,
        "study": results["study"],
        "protocol_sha256": results["protocol_sha256"],
        "task": spec.task,
        "architecture": spec.architecture,
        "parameters": sum(int(v.numel()) for v in record.final.values()),
        "input": _input(spec),
        "sites": sorted(record.epsilon),
        "training_examples_per_site": examples,
        "rounds": spec.rounds,
        "local_epochs": spec.local_epochs,
        "strategy": spec.strategy,
        "privacy": {
            "mechanism": "DP-SGD (Opacus): per-sample clipping, Gaussian noise, Poisson sampling",
            "unit": UNITS[spec.task],
            "accountant": "RDP, one per site for the whole training",
            "target_epsilon": spec.privacy.target_epsilon,
            "delta": spec.privacy.delta,
            "max_grad_norm": spec.privacy.max_grad_norm,
            "epsilon_spent": record.epsilon,
        },
        "final_metrics": record.rounds[-1]["evaluate"]["weighted"] if record.rounds else {},
        "best_round": record.best_round,
        "skipped_images": record.skipped,
        "refusals": record.refusals,
        "software": results["software"],
    }


def _dice(metrics: dict[str, float]) -> list[str]:
    if "dice-ci-low" not in metrics:
        return []
    return [f"- Dice over all held-out volumes: {metrics['dice']:.3f} (95% CI {metrics['dice-ci-low']:.3f} to "
            f"{metrics['dice-ci-high']:.3f})"]  # fmt: skip


def _input(spec: TrainingSpec) -> dict[str, Any]:
    if spec.task == "image_classification":
        return {"images": spec.images, "labels": spec.labels, "image_size": list(spec.image_size)}
    if spec.task == "image_segmentation":
        return {"series": spec.images, "masks": spec.masks, "spacing_mm": list(spec.spacing),
                "volume_size": list(spec.volume_size), "window": list(spec.window) if spec.window else "percentile"}  # fmt: skip
    return {"table": "cohort", "features": spec.features, "outcome": spec.outcome}


def _markdown(card: dict[str, Any]) -> str:
    privacy = card["privacy"]
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in card["final_metrics"].items()) or "none"
    lines = [
        f"# Model card: {card['model']}",
        "",
        f"- Study: {card['study']['id']} — {card['study']['title']} (protocol {card['protocol_sha256']})",
        f"- Task: {card['task']}; architecture: {card['architecture']} ({card['parameters']:,} parameters)",
        f"- Input: {json.dumps(card['input'])}",
        f"- Sites: {', '.join(card['sites'])}; training examples per site: {json.dumps(card['training_examples_per_site'])}",
        f"- Training: {card['rounds']} rounds × {card['local_epochs']} local epoch(s), strategy {card['strategy']}; "
        f"best round {card['best_round']} (lowest weighted held-out loss)",
        f"- Held-out metrics after the last round (weighted over sites): {metrics}",
        *_dice(card["final_metrics"]),
        "",
        "## Privacy",
        "",
        f"{privacy['mechanism']}; one sample is {privacy['unit']}; {privacy['accountant']}. Target ε = {privacy['target_epsilon']} per site at "
        f"δ = {privacy['delta']}, clipping norm {privacy['max_grad_norm']}. ε spent per site: "
        + ", ".join(f"{site} {eps:.3f}" for site, eps in privacy["epsilon_spent"].items())
        + ".",
        "",
        "For any one patient, the model (and every update a site sent) is almost as likely whether or not that "
        f"patient's data were used: the odds of any outcome change by at most a factor e^ε ≈ {2.718281828 ** privacy['target_epsilon']:.1f}, "
        f"except with probability δ = {privacy['delta']}.",
        "",
        "## Limitations",
        "",
        "Trained on the participating sites' data only; validate on local data before any clinical use. "
        "Differential privacy costs accuracy, more so for small sites.",
    ]
    return "\n".join(lines) + "\n"
