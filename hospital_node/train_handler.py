"""Answer the coordinator's training and evaluation rounds, under the site's policy and privacy budget.

Before a round trains, the node composes the training's whole DP history with the round it is
about to run (one accountant per site for the study, never reset) and refuses if that would pass
the study's target ε, or the site's `max_epsilon` across all its studies. The ε actually spent
goes to the privacy ledger and the audit log before the weights leave.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from analyses.contract import DataError
from analyses.disclosure import Refused
from hospital_node import training
from hospital_node.gate import Admitted, SiteRefusal, admit, digest, items
from hospital_node.privacy_ledger import PrivacyLedger, epsilon
from hospital_node.site import SiteError
from workbench import models
from workbench.training_spec import TrainingSpec

Refusals = (Refused, SiteRefusal, SiteError, DataError)
"""Why a site does not take part in a round; the reason goes back to the coordinator."""


def train(folder: str | Path, content: RecordDict, requester: str) -> RecordDict:
    """Train one round locally with DP-SGD; return weights, examples, loss and ε spent so far."""
    admitted, spec, config = _admitted(folder, content, requester, "train")
    site, protocol = admitted.site, admitted.protocol
    if spec.privacy.delta > site.policy.delta:
        raise Refused(f"the training's δ = {spec.privacy.delta:g} is above the site's δ = {site.policy.delta:g}")
    data = training.local_data(site, protocol, spec, _floats(config, "mean"), _floats(config, "sd"))
    sigma, rate, steps = training.noise_multiplier(spec, len(data.y_train))
    ledger = PrivacyLedger(site.state)
    key = f"{protocol.sha256}/{spec.id}"
    planned = epsilon([*ledger.entry(key)["history"], (sigma, rate, steps)], spec.privacy.delta)
    if planned > spec.privacy.target_epsilon * (1 + 1e-6):
        raise Refused(f"this round would bring the training's ε to {planned:.3g}, above its target "
                      f"{spec.privacy.target_epsilon:g} (the site's privacy budget for it is spent)")  # fmt: skip
    elsewhere = ledger.spent_elsewhere(key)
    if elsewhere + planned > site.policy.max_epsilon:
        raise Refused(f"this round would bring the site's ε to {elsewhere + planned:.3g}, above its "
                      f"max_epsilon = {site.policy.max_epsilon:g}")  # fmt: skip
    model = _model(spec, content)
    mu = float(config.get("proximal-mu", 0.0)) if spec.strategy == "fedprox" else 0.0
    state, history, loss = training.train_round(model, data, spec, sigma, mu)
    round_number = int(config["server-round"])
    spent = ledger.record(key, protocol.model.study.id, history, spec.privacy.delta, round_number)
    arrays = {name: value.numpy() for name, value in state.items()}
    admitted.audit.append(
        "release", protocol_sha256=protocol.sha256, study=protocol.model.study.id, round=round_number,
        analysis=spec.id, phase="train", rows=len(data.y_train), items=items(arrays), digest=digest(arrays),
        epsilon=spent, delta=spec.privacy.delta, noise_multiplier=sigma,
    )  # fmt: skip
    metrics = {"num-examples": len(data.y_train), "train-loss": loss, "epsilon": spent}
    return RecordDict(
        {
            "arrays": ArrayRecord(state),
            "metrics": MetricRecord(metrics),
            "site": ConfigRecord({"id": site.id, "skipped": json.dumps(data.skipped)}),
        }
    )


def evaluate(folder: str | Path, content: RecordDict, requester: str) -> RecordDict:
    """Loss, accuracy and AUC (segmentation: Dice and HD95) of the global model on the site's held-out rows."""
    admitted, spec, config = _admitted(folder, content, requester, "evaluate")
    site, protocol = admitted.site, admitted.protocol
    data = training.local_data(site, protocol, spec, _floats(config, "mean"), _floats(config, "sd"))
    if len(data.y_val) < site.policy.min_cell_count:
        raise Refused(f"its held-out rows are fewer than the site's minimum count {site.policy.min_cell_count}")
    found = training.scores(_model(spec, content), data.x_val, data.y_val, spec)
    metrics: dict[str, Any] = {"num-examples": len(data.y_val), **found}
    admitted.audit.append(
        "release", protocol_sha256=protocol.sha256, study=protocol.model.study.id, round=int(config["server-round"]),
        analysis=spec.id, phase="evaluate", rows=len(data.y_val),
        metrics={key: value if math.isfinite(value) else None for key, value in metrics.items()},
    )  # fmt: skip
    return RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"id": site.id})})


def _admitted(
    folder: str | Path, content: RecordDict, requester: str, phase: str
) -> tuple[Admitted, TrainingSpec, ConfigRecord]:
    config = content.config_records["config"]
    admitted = admit(folder, str(config["sha256"]), str(config["protocol"]), int(config["server-round"]), requester,
                     training=str(config["training"]), phase=phase)  # fmt: skip
    spec = admitted.protocol.trainings.get(str(config["training"]))
    if spec is None:
        raise Refused(f"training '{config['training']}' is not in the approved protocol")
    problems = admitted.site.policy.conflicts(spec.task, [*spec.columns(), *admitted.protocol.cohort_columns])
    if problems:
        raise Refused("; ".join(problems))
    return admitted, spec, config


def _model(spec: TrainingSpec, content: RecordDict) -> Any:
    model = models.build(spec.architecture, len(spec.features))
    model.load_state_dict(content.array_records["arrays"].to_torch_state_dict())
    return model


def _floats(config: ConfigRecord, key: str) -> list[float]:
    return [float(value) for value in config.get(key, [])]  # type: ignore[union-attr]
