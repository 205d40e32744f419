"""What travels between coordinator and nodes, as Flower records.

Shared by `workbench` (the ServerApp) and `hospital_node` (the ClientApp); it holds
no coordinator logic. A request carries the protocol text and hash and one query
per pending analysis; a reply carries the site id and one array per contribution key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from analyses.contract import Contribution, Query

MESSAGE_TYPE = "query"


@dataclass(frozen=True)
class Request:
    protocol_text: str
    protocol_sha256: str
    round: int
    queries: dict[str, Query]

    def to_records(self) -> RecordDict:
        return RecordDict(
            {
                "study": ConfigRecord(
                    {
                        "protocol": self.protocol_text,
                        "sha256": self.protocol_sha256,
                        "round": self.round,
                        "queries": json.dumps({k: q.to_json() for k, q in self.queries.items()}),
                    }
                )
            }
        )

    @classmethod
    def from_records(cls, content: RecordDict) -> Request:
        study = content.config_records["study"]
        queries = {k: Query.from_json(v) for k, v in json.loads(str(study["queries"])).items()}
        return cls(str(study["protocol"]), str(study["sha256"]), int(study["round"]), queries)


@dataclass(frozen=True)
class Reply:
    site: str
    rows: int = 0
    contributions: dict[str, Contribution] = field(default_factory=dict)
    error: str = ""

    def to_records(self) -> RecordDict:
        arrays = {
            f"{analysis_id}/{key}": Array(np.ascontiguousarray(value))
            for analysis_id, contribution in self.contributions.items()
            for key, value in contribution.items()
        }
        return RecordDict(
            {
                "site": ConfigRecord({"id": self.site, "rows": self.rows, "error": self.error}),
                "data": ArrayRecord(arrays),
            }
        )

    @classmethod
    def from_records(cls, content: RecordDict) -> Reply:
        site = content.config_records["site"]
        contributions: dict[str, Contribution] = {}
        for name, array in content.array_records["data"].items():
            analysis_id, key = name.split("/", 1)
            contributions.setdefault(analysis_id, {})[key] = array.numpy()
        return cls(str(site["id"]), int(site["rows"]), contributions, str(site["error"]))
