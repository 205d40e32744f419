"""The site's differential-privacy ledger: `state/privacy_ledger.json`.

One entry per (study protocol, training): the history of DP-SGD steps (noise multiplier,
sampling rate, steps) across all its rounds, composed by one RDP accountant, never reset per
round. The site's total is the sum of its studies' ε (basic composition across studies), which
must stay within the policy's `max_epsilon`.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FILE = "privacy_ledger.json"

History = list[tuple[float, float, int]]
"""(noise multiplier, sampling rate, steps) per stretch of DP-SGD."""


def epsilon(history: History, delta: float) -> float:
    """ε of all of `history` composed (RDP accountant, converted at δ)."""
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant  # torch loads only where ε is computed

    accountant = RDPAccountant()
    accountant.history = [tuple(step) for step in history]
    return float(accountant.get_epsilon(delta))


class PrivacyLedger:
    def __init__(self, state: Path) -> None:
        self.path = state / FILE

    def read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"trainings": {}}
        return json.loads(self.path.read_text(encoding="utf-8"))

    def entry(self, key: str) -> dict[str, Any]:
        return self.read()["trainings"].get(key, {"history": [], "epsilon": 0.0, "rounds": []})

    def spent_elsewhere(self, key: str) -> float:
        """ε spent by every other study and training at this site."""
        return sum(item["epsilon"] for name, item in self.read()["trainings"].items() if name != key)

    def record(self, key: str, study: str, history: History, delta: float, round_number: int) -> float:
        """Add one round's DP-SGD to the training's history; return the training's ε so far."""
        document = self.read()
        item = document["trainings"].setdefault(key, {"study": study, "history": [], "epsilon": 0.0, "rounds": []})
        item["history"] = [*item["history"], *[list(step) for step in history]]
        item["delta"] = delta
        item["epsilon"] = epsilon(item["history"], delta)
        item["rounds"] = [*item["rounds"], round_number]
        item["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(document, stream, indent=1)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, self.path)
        return item["epsilon"]
