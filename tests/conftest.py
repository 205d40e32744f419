"""Shared fixtures: real data split by real (or plausible) centres, and an in-memory federation."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from pydantic import TypeAdapter

from analyses.driver import run_in_memory
from analyses.registry import AnySpec
from workbench.datasets import gbsg2_sites, lung_institutions

SPEC = TypeAdapter(AnySpec)


@pytest.fixture(scope="session")
def lung() -> dict[str, pd.DataFrame]:
    """NCCTG lung, one site per real institution (18 sites, 2 to 36 patients)."""
    return lung_institutions()


@pytest.fixture(scope="session")
def gbsg() -> dict[str, pd.DataFrame]:
    return gbsg2_sites()


def pooled(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """All sites' rows in one table, with the site id in column `site`."""
    return pd.concat([rows.assign(site=site) for site, rows in frames.items()], ignore_index=True)


def federate(frames: dict[str, pd.DataFrame], **blocks: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run protocol-style analysis blocks (keyword = analysis id) over the sites; fail on analysis errors."""
    specs = {analysis_id: SPEC.validate_python({"id": analysis_id, **block}) for analysis_id, block in blocks.items()}
    results = run_in_memory(specs, frames)
    for analysis_id, result in results.items():
        assert "error" not in result, f"{analysis_id}: {result['error']}"
    return results
