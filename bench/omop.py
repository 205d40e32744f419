"""OMOP cohorts at scale: the node's cohort materialisation on DuckDB and PostgreSQL, next to the independent
pandas reference on the same data, and the whole federated Eunomia study.

Eunomia (2,694 persons) is replicated `--copies` times (default 38: 102,372 persons): copy k adds k·10⁷ to
every person id and to each table's own record id; dates and concepts are unchanged, so every cohort count
is exactly `copies` times Eunomia's (checked). The vocabulary and the other tables are copied once. The
replicated CDM is then loaded into a throwaway PostgreSQL 15 server (tests/postgres.py), once with the
server's default settings and once tuned as a CDM server is (TUNED), and, for the federated study, split
into the demo's 4 hospital DuckDB files (40/30/20/10 %).

    python bench/omop.py [--copies 38] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hospital_node import omop
from hospital_node.site import open_site
from tests.omop_reference import duckdb_tables, reference_cohort
from tests.postgres import create_role_and_database, load_cdm, start_postgres
from workbench import demo, eunomia, protocol

OFFSET = 10_000_000
READ = ["person", "observation_period", "drug_exposure", "condition_occurrence", "concept", "concept_ancestor",
        "cdm_source"]  # fmt: skip
"""The tables the demo cohort reads (all PostgreSQL needs)."""
TUNED = {"shared_buffers": "1GB", "work_mem": "64MB"}
"""A modest CDM server's settings (shared_buffers is often 25 % of memory; here 1 GB of 24)."""


def replicate(target: Path, copies: int) -> int:
    """Eunomia's CDM with its persons `copies` times over, as a DuckDB file; returns the number of persons."""
    target.unlink(missing_ok=True)
    with duckdb.connect(str(target)) as db:
        db.execute(f"ATTACH '{eunomia.eunomia_path()}' AS eunomia (READ_ONLY)")
        tables = [
            r[0]
            for r in db.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'eunomia'").fetchall()
        ]
        for table in tables:
            columns = {r[0].lower() for r in db.execute(f"DESCRIBE eunomia.main.{table}").fetchall()}
            if "person_id" not in columns:
                db.execute(f"CREATE TABLE main.{table} AS SELECT * FROM eunomia.main.{table}")
                continue
            shifted = ["person_id"] + [f"{table}_id"] * (f"{table}_id" in columns and table != "person")
            replace = ", ".join(f"{c} + k * {OFFSET} AS {c}" for c in shifted)
            db.execute(f"CREATE TABLE main.{table} AS SELECT * EXCLUDE (k) REPLACE ({replace}) "
                       f"FROM eunomia.main.{table}, (SELECT range AS k FROM range({copies}))")  # fmt: skip
        db.execute("DETACH eunomia")
        return int(db.execute("SELECT count(*) FROM person").fetchone()[0])


def timed(action: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median wall seconds of `repeat` runs, and the last run's value."""
    seconds, value = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        value = action()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), value


def federated(work: Path, cdm: Path) -> tuple[float, int]:
    """Wall seconds of the whole `workbench run` of the demo study on 4 hospitals split from `cdm`."""
    sites = demo.build_omop_sites(work / "sites", cdm)
    path = work / "protocol.toml"
    path.write_text(demo.protocol_text("eunomia") + demo.roster(sites))
    demo.approve(sites, protocol.load(path))
    command = [sys.executable, "-m", "workbench.cli", "run", str(path), "--out", str(work / "out"), "--quiet"]
    command += [arg for folder in sites for arg in ("--site", str(folder))]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stderr)
    return seconds, len(sites)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=38)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cohort = protocol.parse(
        demo.protocol_text("eunomia") + "\n[privacy]\nsecure_aggregation = false\n"
    ).model.cohort.omop
    work = Path(tempfile.mkdtemp(prefix="bench-omop-"))
    try:
        started = time.perf_counter()
        persons = replicate(work / "cdm.duckdb", args.copies)
        built = time.perf_counter() - started
        single = len(
            omop.materialise(
                open_site(demo.omop_site(work / "eunomia", f'url = "duckdb://{eunomia.eunomia_path()}"')), cohort
            ).rows
        )

        local = open_site(demo.omop_site(work / "duckdb", f'url = "duckdb://{work / "cdm.duckdb"}"'))
        duck_s, found = timed(lambda: omop.materialise(local, cohort), args.repeat)
        rows = len(found.rows)  # type: ignore[union-attr]
        assert rows == single * args.copies, (rows, single)

        def pandas_reference() -> int:
            return len(reference_cohort(duckdb_tables(work / "cdm.duckdb"), cohort))

        pandas_s, reference_rows = timed(pandas_reference, args.repeat)
        assert reference_rows == rows

        postgres = {}
        for name, settings in (("default settings", None), (", ".join(f"{k} {v}" for k, v in TUNED.items()), TUNED)):
            (work / "pg").mkdir(exist_ok=True)
            with start_postgres(work / "pg", settings) as server:
                create_role_and_database(server, "steward", "bench-password", "cdm")
                started = time.perf_counter()
                load_cdm(work / "cdm.duckdb", server, "cdm", "cdm", "steward", tables=READ)
                loaded = time.perf_counter() - started
                os.environ["BENCH_PG_PASSWORD"] = "bench-password"
                remote = open_site(demo.omop_site(work / "postgres", f'url = "{server.url("steward", "cdm")}"\n'
                                        'cdm_schema = "cdm"\npassword_env = "BENCH_PG_PASSWORD"'))  # fmt: skip
                pairs = []  # PostgreSQL and DuckDB in turn, so that the machine's drift hits both alike
                for _ in range(args.repeat):
                    pg_one, found_pg = timed(lambda: omop.materialise(remote, cohort), 1)  # noqa: B023
                    pairs.append((pg_one, timed(lambda: omop.materialise(local, cohort), 1)[0]))
                postgres[name] = (statistics.median(p for p, _ in pairs), statistics.median(d for _, d in pairs))
                assert found_pg.rows.equals(found.rows)  # type: ignore[union-attr]

        whole_s, sites = federated(work / "federated", work / "cdm.duckdb")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    per_100k = 100_000 / persons
    print(f"# OMOP cohort materialisation — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"DuckDB {duckdb.__version__}, PostgreSQL 15")  # fmt: skip
    print(f"Eunomia × {args.copies} = {persons:,} persons (built in {built:.1f} s; PostgreSQL load of the 7 tables "
          f"read, with OHDSI's concept and person indexes: {loaded:.1f} s); celecoxib vs diclofenac cohort: {rows:,} persons; median of {args.repeat}\n")  # fmt: skip
    print("| what | seconds | per 100k persons |")
    print("|---|---|---|")
    print(f"| node materialisation, DuckDB | {duck_s:.2f} | {duck_s * per_100k:.2f} |")
    for name, (pg_s, paired_s) in postgres.items():
        print(f"| node materialisation, PostgreSQL 15 ({name}) | {pg_s:.2f} | {pg_s * per_100k:.2f} "
              f"({pg_s / paired_s:.1f}× DuckDB measured in turn: {paired_s:.2f} s) |")  # fmt: skip
    print(f"| pandas reference (reads whole tables) | {pandas_s:.2f} | {pandas_s * per_100k:.2f} |")
    print(f"| whole federated study, `workbench run`, {sites} DuckDB hospitals | {whole_s:.2f} | |")


if __name__ == "__main__":
    main()
