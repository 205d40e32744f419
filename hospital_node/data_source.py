"""Where a site's data live: `[data]` in `site.toml`.

```toml
[data]
source = "files"        # the default: tables as files in the site folder (patients.csv, …)

[data]
source = "omop"         # an OMOP CDM database, read-only
url = "duckdb://cdm.duckdb"                        # embedded DuckDB file (relative to the site folder), or
url = "postgresql://steward@db.hospital:5432/cdm"  # PostgreSQL
cdm_schema = "cdm"                                 # default: main (DuckDB) / public (PostgreSQL)
vocabulary_schema = "vocab"                        # default: cdm_schema
password_env = "CDM_PASSWORD"                      # PostgreSQL password from this variable, else ~/.pgpass
```

A password never goes in `site.toml`: a URL holding one is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA = r"^[A-Za-z_][A-Za-z0-9_]*$"


class DataSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["files", "omop"] = "files"
    url: str = ""
    cdm_schema: str | None = Field(None, pattern=SCHEMA)
    vocabulary_schema: str | None = Field(None, pattern=SCHEMA)
    password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _usable(self) -> DataSource:
        if self.source == "files":
            if self.url:
                raise ValueError('url is for source = "omop"; the files source reads the site folder')
            return self
        if self.engine == "duckdb":
            if not self.url.removeprefix("duckdb://"):
                raise ValueError('url: name the DuckDB file, e.g. url = "duckdb://cdm.duckdb"')
            if self.password_env:
                raise ValueError("password_env is for PostgreSQL; a DuckDB file has no password")
        elif self.engine == "postgresql":
            parts = urlsplit(self.url)
            if parts.password is not None:
                raise ValueError("url holds a password: remove it, and put the password in the environment variable "
                                 "that password_env names, or in ~/.pgpass")  # fmt: skip
            if not parts.hostname or not parts.path.strip("/"):
                raise ValueError("url: write postgresql://USER@HOST:PORT/DATABASE")
        else:
            raise ValueError(
                "url must start with duckdb:// (an embedded DuckDB file) or postgresql:// (a PostgreSQL server)"
            )
        return self

    @property
    def engine(self) -> str:
        """ "duckdb" or "postgresql" (from the url's scheme)."""
        scheme = self.url.partition("://")[0] if "://" in self.url else ""
        return {"postgres": "postgresql"}.get(scheme, scheme)

    @property
    def cdm(self) -> str:
        return self.cdm_schema or ("main" if self.engine == "duckdb" else "public")

    @property
    def vocabulary(self) -> str:
        return self.vocabulary_schema or self.cdm

    def duckdb_file(self, site: Path) -> Path:
        """The DuckDB file (a relative path is inside the site folder)."""
        return site / self.url.removeprefix("duckdb://")

    def label(self) -> str:
        """Where the data are, for messages (never a credential: the url holds none)."""
        if self.engine == "duckdb":
            return f"OMOP CDM {self.url} (DuckDB)"
        parts = urlsplit(self.url)
        return f"OMOP CDM {parts.scheme}://{parts.netloc}{parts.path} (PostgreSQL)"
