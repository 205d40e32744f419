"""Shared fixtures: real data split by real (or plausible) centres, and an in-memory federation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pydantic import TypeAdapter

from analyses import driver, registry
from analyses.driver import run_in_memory
from analyses.registry import AnySpec
from hospital_node import approvals
from hospital_node.gate import identity_line
from hospital_node.handler import answer
from hospital_node.site import open_site
from workbench.datasets import gbsg2_sites, lung_institutions
from workbench.federation import SiteExchange
from workbench.messages import Reply, Request
from workbench.protocol import Protocol, parse

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


class DictKeys(dict):
    """A node's key store held in a dict (the ClientApp keeps them in its Flower context state)."""

    def put(self, name: str, value: bytes) -> None:
        self[name] = value


class NodeFolders(SiteExchange):
    """Rounds delivered to each site folder's real node handler in this process (no network).

    Requests and replies still pass through their Flower record encoding.
    """

    def __init__(self, protocol: Protocol, folders: list[Path]) -> None:
        super().__init__(protocol, len(folders))
        self.folders = {open_site(folder).id: folder for folder in folders}
        self.keys = {site: DictKeys() for site in self.folders}

    def send(self, request: Request, sites: list[str] | None) -> tuple[list[Reply], dict[str, str]]:
        replies = []
        for site in sites if sites is not None else list(self.folders):
            reply = answer(self.folders[site], Request.from_records(request.to_records()), "test coordinator",
                           self.keys[site])  # fmt: skip
            replies.append(Reply.from_records(reply.to_records()))
        return replies, {}


def make_site(folder: Path, rows: pd.DataFrame, policy: str = "clear_aggregation = true") -> Path:
    """A site folder with `rows` as patients.csv and `policy` as its [policy] section."""
    folder.mkdir(parents=True)
    (folder / "site.toml").write_text(f'[site]\nid = "{folder.name}"\n' + (f"[policy]\n{policy}\n" if policy else ""))
    rows.to_csv(folder / "patients.csv", index=False)
    return folder


def roster(folders: list[Path]) -> str:
    """The `[federation.sites]` section pinning the folders' identity keys."""
    return "\n[federation.sites]\n" + "".join(
        f'{open_site(folder).id} = "{identity_line(open_site(folder))}"\n' for folder in folders
    )


def study(
    folders: list[Path], text: str, approve: bool = True, exchange: type[NodeFolders] | None = None
) -> tuple[dict[str, dict[str, Any]], NodeFolders]:
    """Run a protocol over site folders: pin their keys, approve it (as each steward would), run it."""
    if "[federation" not in text:
        text += roster(folders)
    protocol = parse(text)
    if approve:
        for folder in folders:
            approvals.approve(open_site(folder), protocol, by="test steward")
    runner = (exchange or NodeFolders)(protocol, folders)
    plans = {key: registry.plan(spec, protocol.levels) for key, spec in protocol.analyses.items()}
    return driver.run(plans, runner), runner


VARIABLES = """[variables]
sex = { levels = [1, 2] }
"ph.ecog" = { levels = [0, 1, 2, 3] }
horTh = { levels = ["no", "yes"] }
tgrade = { levels = ["I", "II", "III"] }
menostat = { levels = ["Post", "Pre"] }
arms = { levels = [0, 1, 2, 3] }
"""
"""The values of the grouping and text columns of the test data sets (lung, GBSG2, ACTG 175)."""


def protocol_text(*blocks: str, filters: str = "[]", cohort: str = "") -> str:
    """A protocol with the given [[analysis]] blocks (TOML body without the header) and the test data's levels."""
    header = f'[study]\nid = "test"\ntitle = "Test study"\n[cohort]\ntable = "patients"\nfilters = {filters}\n{cohort}'
    return header + VARIABLES + "".join(f"[[analysis]]\n{block.strip()}\n" for block in blocks)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """Keep each phase's report on the test item, so a fixture can tell whether its test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report
