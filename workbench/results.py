"""The results file: what a study produced, in one JSON document written atomically."""

from __future__ import annotations

import json
import math
import os
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

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
        "software": {name: _version(name) for name in ("multicenter-workbench", "flwr", "numpy", "pandas", "scipy")},
        "sites": [
            {"id": site, "rows": reply.rows, "usage": reply.usage, "audit_head": reply.audit_head}
            for site, reply in sorted(run.sites.items())
        ],
        "refusals": run.refusals,
        "rounds": run.rounds,
        "seconds": round(run.seconds, 3),
        "analyses": json_safe(run.analyses),
    }


def write(results: dict[str, Any], out: Path) -> Path:
    """Write `out/results.json` atomically (a reader never sees half a file)."""
    out.mkdir(parents=True, exist_ok=True)
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


def failed(results: dict[str, Any]) -> dict[str, str]:
    """Analysis id → error, for the analyses that could not be computed."""
    return {key: value["error"] for key, value in results["analyses"].items() if "error" in value}


def json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: undefined or infinite values become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"
