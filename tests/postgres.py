"""A real, throwaway PostgreSQL server for tests, and OMOP CDM DuckDB files loaded into it.

`start_postgres` runs initdb and pg_ctl from the installed PostgreSQL (`make postgres` installs Debian's)
in a fresh directory; the test is skipped when PostgreSQL is missing, unless WORKBENCH_REQUIRE_POSTGRES
is set (CI), then it fails. As root the server runs as the `postgres` user (initdb refuses root).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import psycopg
import pytest
from psycopg import sql

from tests.federation import free_port

POSTGRES_TYPES = {
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "DOUBLE": "double precision",
    "VARCHAR": "text",
    "DATE": "date",
    "TIMESTAMP": "timestamp",
    "BOOLEAN": "boolean",
}
"""DuckDB column types and the PostgreSQL types they are loaded as (any other type is loaded as text)."""


@dataclass(frozen=True)
class PostgresServer:
    """A running server: TCP on `host`:`port` (passwords, scram-sha-256), and the superuser's trusted socket."""

    host: str
    port: int
    superuser: str
    socket_dir: Path
    pid: int

    def url(self, user: str, database: str) -> str:
        """The TCP connection URL (pass the password separately, e.g. `psycopg.connect(url, password=...)`)."""
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"

    def connect_superuser(self, database: str = "postgres") -> psycopg.Connection:
        """A superuser connection through the unix socket (trust authentication)."""
        return psycopg.connect(host=str(self.socket_dir), port=self.port, user=self.superuser, dbname=database)


def postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL's binaries, else the folder of `pg_ctl` on PATH, else None."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]), reverse=True)
    if debian:
        return debian[0].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def process_running(pid: int) -> bool:
    """Whether the process lives (a zombie, left by an init that does not reap orphans, counts as gone)."""
    if Path("/proc/self/stat").exists():
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _run(command: list[str], cwd: Path) -> None:
    """Run a PostgreSQL program (as `postgres` when we are root); raise with its output if it fails."""
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    done = subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while process_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _stop(bindir: Path, data: Path, base: Path) -> None:
    """Stop the postmaster of `data` if its PID file is there: fast shutdown, else SIGKILL (its children then exit)."""
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().split()[0])
    try:
        _run([str(bindir / "pg_ctl"), "-D", str(data), "stop", "-m", "fast", "-w", "-t", "20"], base)
    except (RuntimeError, subprocess.TimeoutExpired):
        pass  # the SIGKILL below ends it
    if not _wait_gone(pid, 5):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _wait_gone(pid, 10)


@contextmanager
def start_postgres(tmp: Path, settings: dict[str, str] | None = None) -> Iterator[PostgresServer]:
    """Start a fresh server on a free localhost port (with `settings`, e.g. {"shared_buffers": "1GB"}, on top
    of its defaults); stop it on exit, pass or fail.

    Its files live in a private directory in the system temp folder (short enough for the unix socket's
    path and reachable by the `postgres` user, which pytest's 0700 temp folders are not); on exit the
    server's log is copied to `tmp/postgres.log` and that directory is removed.
    """
    bindir = postgres_bindir()
    if bindir is None:
        reason = "PostgreSQL is not installed (make test installs it: apt-get install postgresql)"
        if os.environ.get("WORKBENCH_REQUIRE_POSTGRES"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="pg-"))
    data, log = base / "data", base / "postgres.log"
    if os.geteuid() == 0:
        shutil.chown(base, user="postgres", group="postgres")
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
              "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"], base)  # fmt: skip
        port = free_port()
        options = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")  # fmt: skip
        options += "".join(f" -c {name}={value}" for name, value in (settings or {}).items())
        try:
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start"], base)
            pid = int((data / "postmaster.pid").read_text().split()[0])
            yield PostgresServer(host="127.0.0.1", port=port, superuser="postgres", socket_dir=base, pid=pid)
        finally:
            _stop(bindir, data, base)
    finally:
        if log.exists():
            shutil.copyfile(log, tmp / "postgres.log")
        shutil.rmtree(base, ignore_errors=True)


def create_role_and_database(server: PostgresServer, role: str, password: str, database: str) -> None:
    """A login role with `password` (stored as scram-sha-256) and a database it owns."""
    with server.connect_superuser() as conn:
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role)))


def _cdm_columns(source: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str]]]:
    """Each base table of DuckDB schema `main`: its (column, type) pairs in order."""
    rows = source.execute(
        """SELECT c.table_name, c.column_name, c.data_type
           FROM information_schema.columns c
           JOIN information_schema.tables t USING (table_catalog, table_schema, table_name)
           WHERE c.table_catalog = current_database() AND c.table_schema = 'main' AND t.table_type = 'BASE TABLE'
           ORDER BY c.table_name, c.ordinal_position"""
    ).fetchall()
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in rows:
        tables.setdefault(table, []).append((column, data_type))
    return tables


def _copy_table(
    source: duckdb.DuckDBPyConnection,
    conn: psycopg.Connection,
    table: str,
    columns: list[tuple[str, str]],
    target: sql.Identifier,
    scratch: Path,
) -> None:
    """Create `target` and fill it with DuckDB table `table` through a CSV file (all non-NULL values quoted)."""
    definition = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(column.lower()), sql.SQL(POSTGRES_TYPES.get(kind, "text")))
        for column, kind in columns
    )
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(target, definition))
    csv = scratch / "table.csv"
    name, path = table.replace('"', '""'), str(csv).replace("'", "''")
    source.execute(f"""COPY main."{name}" TO '{path}' (HEADER, DELIMITER ',', FORCE_QUOTE *)""")
    statement = sql.SQL("COPY {} FROM STDIN (FORMAT csv, HEADER true, FREEZE true)").format(target)
    with conn.cursor().copy(statement) as copy, csv.open("rb") as rows:
        while chunk := rows.read(1 << 20):
            copy.write(chunk)


CONCEPT_INDEXES = {
    "condition_occurrence": "condition_concept_id",
    "drug_exposure": "drug_concept_id",
    "procedure_occurrence": "procedure_concept_id",
    "measurement": "measurement_concept_id",
    "observation": "observation_concept_id",
    "concept": "concept_id",
    "concept_ancestor": "ancestor_concept_id",
}
"""The concept-id indexes of OHDSI's CDM DDL (besides person_id) that the cohort queries use."""


def load_cdm(
    duckdb_path: Path, server: PostgresServer, database: str, schema: str, owner: str, tables: list[str] | None = None
) -> None:
    """Copy an OMOP CDM DuckDB file's tables (all when `tables` is None) into `schema` of `database`.

    Table and column names become lower case; values are kept exactly (every non-NULL CSV value is quoted, so
    '' stays '' and NULL stays NULL). `owner` owns the schema and may SELECT from its tables; person_id and the
    concept columns of CONCEPT_INDEXES are indexed (as OHDSI's CDM index script does) and the tables analysed.
    """
    with duckdb.connect(str(duckdb_path), read_only=True) as source, tempfile.TemporaryDirectory() as scratch:
        columns = _cdm_columns(source)
        unknown = sorted(set(tables or []) - set(columns))
        if unknown:
            raise ValueError(f"{duckdb_path} has no tables {unknown}")
        schema_id, owner_id = sql.Identifier(schema), sql.Identifier(owner)
        with server.connect_superuser(database) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(schema_id, owner_id))
            for table in tables if tables is not None else list(columns):
                target = sql.Identifier(schema, table.lower())
                _copy_table(source, conn, table, columns[table], target, Path(scratch))
                if any(column.lower() == "person_id" for column, _ in columns[table]):
                    conn.execute(sql.SQL("CREATE INDEX ON {} (person_id)").format(target))
                if table.lower() in CONCEPT_INDEXES:
                    column = sql.Identifier(CONCEPT_INDEXES[table.lower()])
                    conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(target, column))
                conn.execute(sql.SQL("ANALYZE {}").format(target))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema_id, owner_id))
            conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(schema_id, owner_id))
