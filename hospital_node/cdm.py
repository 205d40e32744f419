"""A read-only connection to a site's OMOP CDM database: DuckDB (embedded) or PostgreSQL.

Queries are written once with `?` placeholders; values are always bound by the driver. Errors become
SiteError messages that name the site's database and what to do, never a credential.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hospital_node.site import Site, SiteError


@dataclass
class Cdm:
    """An open, read-only CDM connection and where its tables are."""

    engine: str
    connection: Any
    cdm: str
    vocabulary: str
    label: str

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """The rows of a query (`?` placeholders, bound by the driver)."""
        if self.engine == "duckdb":
            return self.connection.execute(sql, list(params)).fetchall()
        with self.connection.cursor() as cursor:
            cursor.execute(sql.replace("?", "%s"), list(params))
            return cursor.fetchall()

    def tables(self) -> dict[str, set[str]]:
        """`schema.table` → its column names (lower case), for the CDM and vocabulary schemas."""
        found: dict[str, set[str]] = {}
        rows = self.rows(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns "
            "WHERE lower(table_schema) IN (lower(?), lower(?))",
            [self.cdm, self.vocabulary],
        )
        for schema, table, column in rows:
            found.setdefault(f"{schema.lower()}.{table.lower()}", set()).add(column.lower())
        return found


@contextmanager
def connect(site: Site) -> Iterator[Cdm]:
    """The site's CDM, opened read-only; closed afterwards."""
    source = site.data
    label = source.label()
    if source.engine == "duckdb":
        connection = _duckdb(site, label)
    else:
        connection = _postgresql(site, label)
    try:
        yield Cdm(source.engine, connection, source.cdm.lower(), source.vocabulary.lower(), label)
    except Exception as error:
        if _driver_error(error):
            raise SiteError(f"reading {label} failed ({_first_line(error)})") from None
        raise
    finally:
        connection.close()


def _duckdb(site: Site, label: str) -> Any:
    import duckdb

    path = site.data.duckdb_file(site.path)
    if not path.is_file():
        raise SiteError(f"{label} not found; check [data] url in site.toml (a relative path is inside the site folder)")
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.Error as error:
        raise SiteError(f"cannot open {label} ({_first_line(error)}); is it a DuckDB database "
                        "that no other program holds open for writing?") from None  # fmt: skip


def _postgresql(site: Site, label: str) -> Any:
    import psycopg

    source = site.data
    password: dict[str, str] = {}
    if source.password_env:
        if source.password_env not in os.environ:
            raise SiteError(f"the environment variable {source.password_env} (password_env in "
                            "site.toml) is not set; set it to the database password before starting the node")  # fmt: skip
        password["password"] = os.environ[source.password_env]
    try:
        connection = psycopg.connect(source.url, connect_timeout=10, application_name="workbench-node", **password)
    except psycopg.Error as error:
        reason = _first_line(error)
        hint = ("check the password in " + (f"${source.password_env}" if source.password_env else "~/.pgpass")
                if "password" in reason else "check [data] url in site.toml and that the server is running")  # fmt: skip
        raise SiteError(f"cannot connect to {label} ({reason}); {hint}") from None
    connection.read_only = True  # every transaction: BEGIN READ ONLY
    connection.execute("SET jit = off")  # this session only: compiling costs more than it saves on a cohort query
    return connection


def _driver_error(error: Exception) -> bool:
    module = type(error).__module__
    return module.startswith(("duckdb", "_duckdb", "psycopg"))


def _first_line(error: BaseException) -> str:
    """The driver's message, first line, without the driver's own prefix (no credential is in it)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.removeprefix("connection failed: ").strip()
