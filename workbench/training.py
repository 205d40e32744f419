"""Federated training on the coordinator: a Flower strategy drives the rounds, we keep the record.

Each `[[training]]` block runs with FedAvg, FedProx or FedAdam (`flwr.serverapp.strategy`):
every round the sites train locally with DP-SGD, the strategy aggregates their weights, and
the sites evaluate the new global model on their held-out rows. Per round the record keeps
each site's training loss and ε spent, each site's and the weighted evaluation metrics (for a
segmentation also the pooled Dice's SD and 95% CI over all held-out volumes), and
every refusal (a site out of privacy budget, with too many unreadable images, …); the final
and the best (lowest weighted evaluation loss) weights are kept for the model files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from workbench import models
from workbench.errors import StudyError
from workbench.protocol import Protocol
from workbench.training_spec import TrainingSpec

Progress = Callable[[str, int, int, dict[str, float]], None]
"""(training id, round, rounds, weighted evaluation metrics)."""


class TrainingStopped(StudyError):
    """No site trained in a round."""


@dataclass
class TrainingRun:
    spec: TrainingSpec
    rounds: list[dict[str, Any]] = field(default_factory=list)
    epsilon: dict[str, float] = field(default_factory=dict)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    final: dict[str, torch.Tensor] = field(default_factory=dict)
    best: dict[str, torch.Tensor] = field(default_factory=dict)
    best_round: int = 0
    error: str = ""
    _pending: dict[str, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The training's entry in results.json."""
        if self.error:
            return {"task": self.spec.task, "error": self.error, "refusals": self.refusals}
        last = self.rounds[-1]["evaluate"]["weighted"] if self.rounds else {}
        return {
            "task": self.spec.task,
            "model": self.spec.architecture,
            "strategy": self.spec.strategy,
            "rounds": self.rounds,
            "epsilon": self.epsilon,
            "target_epsilon": self.spec.privacy.target_epsilon,
            "delta": self.spec.privacy.delta,
            "max_grad_norm": self.spec.privacy.max_grad_norm,
            "final_metrics": last,
            "best_round": self.best_round,
            "model_path": f"models/{self.spec.id}/final.pt",
            "best_model_path": f"models/{self.spec.id}/best.pt",
            "refusals": self.refusals,
            "skipped_images": self.skipped,
        }

    def trained(self, server_round: int, replies: list[Message]) -> None:
        sites: dict[str, dict[str, float]] = {}
        for message in replies:
            if message.has_error():
                self.refusals.append({"round": server_round, "phase": "train", "reason": message.error.reason})
                continue
            site = str(message.content.config_records["site"]["id"])
            metrics = dict(message.content.metric_records["metrics"])
            sites[site] = metrics
            self.epsilon[site] = float(metrics["epsilon"])
            self.skipped[site] = json.loads(str(message.content.config_records["site"]["skipped"]))
        self.rounds.append(
            {"round": server_round, "train": {"sites": sites}, "evaluate": {"sites": {}, "weighted": {}}}
        )
        if not sites:
            reasons = "; ".join(r["reason"] for r in self.refusals if r["round"] == server_round)
            raise TrainingStopped(f"no site trained in round {server_round}: {reasons}")

    def evaluated(self, server_round: int, replies: list[Message], weighted: MetricRecord | None) -> None:
        entry = self.rounds[-1]["evaluate"]
        for message in replies:
            if message.has_error():
                self.refusals.append({"round": server_round, "phase": "evaluate", "reason": message.error.reason})
            else:
                entry["sites"][str(message.content.config_records["site"]["id"])] = dict(
                    message.content.metric_records["metrics"]
                )
        entry["weighted"] = {key: float(value) for key, value in dict(weighted or {}).items()}
        if self.spec.task == "image_segmentation" and entry["sites"]:
            entry["weighted"] |= pooled_dice(entry["sites"].values())
        loss = entry["weighted"].get("loss")
        best = self.rounds[self.best_round - 1]["evaluate"]["weighted"].get("loss") if self.best_round else None
        if loss is not None and (best is None or loss < best):
            self.best_round, self.best = server_round, self._pending


def run(
    grid: Grid, nodes: int, protocol: Protocol, spec: TrainingSpec, scaling: dict[str, Any] | None,
    progress: Progress | None = None, timeout: float = 3600.0, requester: str = "",
) -> TrainingRun:  # fmt: skip
    """Train `spec` over the connected nodes; `scaling` is the describe of a table training's features."""
    record = TrainingRun(spec)
    mean, sd = _scaling(spec, scaling)
    config = ConfigRecord({"protocol": protocol.text, "sha256": protocol.sha256, "training": spec.id, "mean": mean,
                           "sd": sd, "requested_by": requester})  # fmt: skip
    strategy = _strategy(spec, nodes, record, progress)
    initial = ArrayRecord(models.build(spec.architecture, len(spec.features)).state_dict())
    try:
        result = strategy.start(
            grid=grid, initial_arrays=initial, num_rounds=spec.rounds, timeout=timeout,
            train_config=config, evaluate_config=ConfigRecord(dict(config)),
        )  # fmt: skip
    except TrainingStopped as stopped:
        record.error = str(stopped)
        return record
    record.final = result.arrays.to_torch_state_dict()
    return record


def pooled_dice(sites: Iterable[dict[str, float]]) -> dict[str, float]:
    """Mean Dice over all sites' held-out volumes with its SD and t-based 95% CI, from each site's volume count,
    mean and SD (exactly what pooling the per-volume Dice would give)."""
    from analyses.distributions import t_ppf

    rows = [(site["num-examples"], site["dice"], site["dice-sd"]) for site in sites]
    total = sum(n for n, _, _ in rows)
    mean = sum(n * d for n, d, _ in rows) / total
    squares = sum((n - 1) * sd**2 + n * d**2 for n, d, sd in rows)
    sd = math.sqrt(max(squares - total * mean**2, 0.0) / (total - 1)) if total > 1 else 0.0
    half = t_ppf(0.975, total - 1) * sd / math.sqrt(total) if total > 1 else math.nan
    return {"dice": mean, "dice-sd": sd, "dice-ci-low": mean - half, "dice-ci-high": mean + half}


def _weighted(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Each metric averaged over the sites where it is defined, weighted by their examples."""
    rows = [dict(next(iter(record.metric_records.values()))) for record in records]
    names = sorted({key for row in rows for key in row} - {weight_key, "epsilon"})
    averaged = {}
    for name in names:
        pairs = [(row[name], row[weight_key]) for row in rows if math.isfinite(row.get(name, math.nan))]
        total = sum(weight for _, weight in pairs)
        averaged[name] = sum(value * weight for value, weight in pairs) / total if total else math.nan
    return MetricRecord(averaged)


def _scaling(spec: TrainingSpec, scaling: dict[str, Any] | None) -> tuple[list[float], list[float]]:
    if spec.task != "tabular_classification":
        return [], []
    if scaling is None or "error" in scaling:
        reason = scaling["error"] if scaling else "it did not run"
        raise StudyError(f"training '{spec.id}': the pooled mean and sd of its features are unavailable ({reason})")
    variables = scaling["variables"]
    return [variables[f]["mean"] for f in spec.features], [variables[f]["sd"] or 1.0 for f in spec.features]


def _strategy(spec: TrainingSpec, nodes: int, record: TrainingRun, progress: Progress | None) -> FedAvg:
    base = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam}[spec.strategy]
    options: dict[str, Any] = {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": nodes,
                               "min_evaluate_nodes": nodes, "min_available_nodes": nodes,
                               "train_metrics_aggr_fn": _weighted, "evaluate_metrics_aggr_fn": _weighted}  # fmt: skip
    if spec.strategy == "fedprox":
        options["proximal_mu"] = spec.proximal_mu
    if spec.strategy == "fedadam":
        options["eta"] = spec.server_learning_rate

    class Recording(base):  # type: ignore[misc, valid-type]
        def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
            replies = list(replies)
            record.trained(server_round, replies)
            arrays, metrics = super().aggregate_train(server_round, replies)
            record._pending = arrays.to_torch_state_dict() if arrays is not None else {}
            return arrays, metrics

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> Any:
            replies = list(replies)
            weighted = super().aggregate_evaluate(server_round, replies)
            record.evaluated(server_round, replies, weighted)
            if progress:
                progress(spec.id, server_round, spec.rounds, record.rounds[-1]["evaluate"]["weighted"])
            return weighted

    return Recording(**options)
