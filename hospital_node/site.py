"""A hospital's site folder: its identity (`site.toml`) and its cohort tables.

```
site/
  site.toml      [site] id, name; [policy] (see hospital_node.policy); [data] (see hospital_node.data_source)
  patients.csv   (or patients.parquet) one row per patient, unless [data] names an OMOP CDM database
  state/         written by the node: audit log, approved protocols, query ledger
```
"""

from __future__ import annotations

import csv
import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pandas as pd
from pydantic import ValidationError

from hospital_node.data_source import DataSource
from hospital_node.policy import Policy

_Section = TypeVar("_Section", Policy, DataSource)


class SiteError(Exception):
    """The site folder or one of its files cannot be used; the message names the file."""


@dataclass(frozen=True)
class Site:
    path: Path
    id: str
    name: str
    policy: Policy = Policy()
    data: DataSource = DataSource()

    @property
    def state(self) -> Path:
        return self.path / "state"

    def table_path(self, table: str) -> Path:
        """The file holding `table`: `<table>.csv` or `<table>.parquet`."""
        for suffix in (".csv", ".parquet"):
            candidate = self.path / f"{table}{suffix}"
            if candidate.is_file():
                return candidate
        raise SiteError(f"{self.path}: no {table}.csv or {table}.parquet; put the cohort table in the site folder")


def open_site(path: str | Path) -> Site:
    """Read a site folder's identity; without `site.toml` the folder name is the site id."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise SiteError(f"{path}: site folder not found")
    config = path / "site.toml"
    if not config.is_file():
        return Site(path=path, id=path.name, name=path.name)
    try:
        document = tomllib.loads(config.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SiteError(f"{config}: not valid TOML: {error}") from None
    section = document.get("site", {})
    site_id = section.get("id", path.name)
    if not isinstance(site_id, str) or not site_id:
        raise SiteError(f"{config}: [site] id must be a non-empty text")
    policy = _section(config, document, "policy", Policy)
    data = _section(config, document, "data", DataSource)
    return Site(path=path, id=site_id, name=str(section.get("name", site_id)), policy=policy, data=data)


def _section(config: Path, document: dict, name: str, model: type[_Section]) -> _Section:
    try:
        return model.model_validate(document.get(name, {}))
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(map(str, first["loc"]))
        where = f"[{name}] {field}:" if field else f"[{name}]:"
        raise SiteError(f"{config}: {where} {first['msg'].removeprefix('Value error, ')}") from None


def load_table(site: Site, table: str) -> pd.DataFrame:
    """The table's rows, labelled by their line number in the file (row number for parquet)."""
    path = site.table_path(table)
    stat = path.stat()
    return _read(path, stat.st_mtime_ns, stat.st_size).copy()


@functools.lru_cache(maxsize=256)
def _read(path: Path, _mtime: int, _size: int) -> pd.DataFrame:
    """Cached per file version, so a study's rounds read each table once (a simulation runs many sites per process)."""
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
            frame.index = range(1, len(frame) + 1)
        else:
            frame = pd.read_csv(path)
            frame.index = range(2, len(frame) + 2)  # line 1 is the header
            _no_short_rows(path, len(frame.columns))
    except pd.errors.EmptyDataError:
        raise SiteError(f"{path.name} is empty; it needs a header line and one row per patient") from None
    except pd.errors.ParserError as error:
        detail = str(error).strip().removeprefix("Error tokenizing data. C error: ")
        raise SiteError(f"{path.name} is not a well-formed CSV file ({detail}); fix that line") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SiteError(f"{path.name} cannot be read ({error})") from None
    if frame.empty:
        raise SiteError(f"{path.name} has no rows; the site has no patients to contribute")
    return frame


def _no_short_rows(path: Path, fields: int) -> None:
    """SiteError naming the first line with fewer fields than the header (pandas would fill them as missing)."""
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.reader(stream)
        for row in reader:
            if row and len(row) < fields:
                raise SiteError(
                    f"{path.name} is not a well-formed CSV file (line {reader.line_num}: "
                    f"{len(row)} fields, the header has {fields}; a truncated export?); fix that line"
                )
