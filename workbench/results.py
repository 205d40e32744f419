"""The results file: what a study produced, in one JSON document written atomically."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from workbench.federation import Attempt
from workbench.protocol import Protocol
from workbench.server_app import StudyRun

FORMAT = "workbench-results/1"


def build(protocol: Protocol, run: StudyRun, engine: str) -> dict[str, Any]:
    """The results document for a finished run."""
    return {
        "format": FORMAT,
        "study": {"id": protocol.model.study.id, "title": protocol.model.study.title},
        "protocol_sha256": protocol.sha256,
        "engine": engine,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "software": software(),
        "sites": [
            {"id": site, "rows": reply.rows, "usage": reply.usage, "audit_head": reply.audit_head}
            for site, reply in sorted(run.sites.items())
        ],
        "refusals": run.refusals,
        "secure_aggregation": run.aggregation,
        "rounds": run.rounds,
        "seconds": round(run.seconds, 3),
        "analyses": json_safe(run.analyses),
        "training": json_safe({key: record.summary() for key, record in run.training.items()}),
    }


def write(results: dict[str, Any], out: Path, run: StudyRun) -> Path:
    """Write the coordinator's transcript, the trained models, then `out/results.json`, each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    _write_transcript(run.transcript, out / "transcript")
    for training_id, record in run.training.items():
        if record.final:
            from workbench import model_card  # torch, only when a model was trained

            model_card.write(out / "models" / training_id, record, results)
    target = out / "results.json"
    handle, temporary = tempfile.mkstemp(dir=out, prefix=".results-", suffix=".json")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(results, stream, indent=1, allow_nan=False)
            stream.write("\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def _write_transcript(transcript: list[Attempt], folder: Path) -> None:
    """Everything the coordinator received, per round attempt and site, exactly as it arrived.

    `index.json` lists attempts (tag, mode, sites, relayed key offers, failures) and per site the
    arrays received; `received.npz` holds them under `<tag>/<site>/<analysis>/<key>`.
    """
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".transcript-"))
    try:
        arrays: dict[str, np.ndarray] = {}
        index = []
        for attempt in transcript:
            received = {}
            for site, named in attempt.received.items():
                received[site] = {name: {"shape": list(v.shape), "dtype": str(v.dtype)} for name, v in named.items()}
                arrays.update({f"{attempt.tag}/{site}/{name}": value for name, value in named.items()})
            index.append({"tag": attempt.tag, "mode": attempt.mode, "sites": attempt.sites, "offers": attempt.offers,
                          "failed": attempt.failed, "seconds": round(attempt.seconds, 4),
                          "bytes_per_site": attempt.bytes_per_site, "received": received})  # fmt: skip
        staging.chmod(0o755)
        (staging / "index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
        np.savez(staging / "received.npz", **arrays)  # masked values are random: compression saves nothing
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def failed(results: dict[str, Any]) -> dict[str, str]:
    """Analysis or training id → error, for those that could not be computed."""
    blocks = {**results["analyses"], **results["training"]}
    return {key: value["error"] for key, value in blocks.items() if "error" in value}


def json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: undefined or infinite values become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


SOFTWARE = ("multicenter-workbench", "flwr", "numpy", "pandas", "scipy", "torch", "opacus", "monai", "pydicom",
            "cryptography")  # fmt: skip


def software() -> dict[str, str]:
    """Versions of the packages a study's numbers depend on."""
    return {name: _version(name) for name in SOFTWARE}


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"
