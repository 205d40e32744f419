"""Usage metering per study, counted from the audit log (so the numbers are as trustworthy as it is)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Usage:
    study: str = ""
    protocol_sha256: str = ""
    queries: int = 0
    """Requests answered or refused."""
    releases: int = 0
    """Contributions that left the site (one per analysis and round)."""
    refusals: int = 0
    rows: int = 0
    """Largest cohort (rows after the protocol's filters) any request used."""
    analyses: list[str] = field(default_factory=list)
    first: str = ""
    last: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def by_study(entries: Iterable[dict[str, Any]]) -> dict[str, Usage]:
    """Protocol SHA-256 → usage of that study at this site."""
    found: dict[str, Usage] = {}
    for entry in entries:
        sha = entry.get("protocol_sha256")
        if not sha or entry["event"] not in ("request", "release", "refusal"):
            continue
        usage = found.setdefault(sha, Usage(study=entry.get("study", ""), protocol_sha256=sha, first=entry["time"]))
        usage.last = entry["time"]
        if entry["event"] == "request":
            usage.queries += 1
        elif entry["event"] == "release":
            usage.releases += 1
            usage.rows = max(usage.rows, entry["rows"])
            if entry["analysis"] not in usage.analyses:
                usage.analyses.append(entry["analysis"])
        else:
            usage.refusals += 1
    return found
