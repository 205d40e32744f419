"""Exact secure aggregation: same results as in the clear, masked transcripts, dropouts, key swaps."""

from __future__ import annotations

import base64
import json
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from analyses import fixed_point
from hospital_node import masking, steward
from hospital_node.site import open_site
from tests.conftest import NodeFolders, make_site, protocol_text, study
from workbench.datasets import actg175, gbsg2_sites, lung_hospitals, lung_institutions, partition
from workbench.errors import StudyError
from workbench.messages import FULL_GRAPH, SPARSE_GRAPH, Reply, Request

PERMISSIVE = "min_cell_count = 1\nmin_rows_per_parameter = 0\nclear_aggregation = true"
SURV = 'duration = "time"\nevent = "status"'
LUNG_SUITE = [
    'id = "d"\ntype = "describe"\nvariables = ["age", "wt.loss", "meal.cal"]\nquantiles = []',  # clear: withheld
    'id = "x"\ntype = "crosstab"\nrow = "sex"\ncolumn = "ph.ecog"',
    'id = "t"\ntype = "ttest"\nvariable = "age"\ngroup = "sex"',
    'id = "a"\ntype = "anova"\nvariable = "age"\ngroup = "ph.ecog"',
    'id = "r"\ntype = "pearson"\nx = "age"\ny = "wt.loss"',
    'id = "ols"\ntype = "linear"\noutcome = "wt.loss"\ncovariates = ["age", "sex", "ph.ecog"]',
    'id = "logit"\ntype = "logistic"\noutcome = "status"\ncovariates = ["age", "sex", "ph.ecog"]',
    'id = "pois"\ntype = "poisson"\noutcome = "status"\ncovariates = ["age", "sex"]\nexposure = "time"',
    f'id = "km"\ntype = "kaplan_meier"\n{SURV}\ngroup = "sex"',
    f'id = "lr"\ntype = "logrank"\n{SURV}\ngroup = "ph.ecog"',
    f'id = "lr_site"\ntype = "logrank"\n{SURV}\ngroup = "sex"\nstrata = ["site"]',
    f'id = "cox"\ntype = "cox"\n{SURV}\ncovariates = ["age", "sex", "ph.ecog"]',
    f'id = "cox_breslow"\ntype = "cox"\n{SURV}\ncovariates = ["age", "sex", "ph.ecog"]\nties = "breslow"',
    f'id = "cox_site"\ntype = "cox"\n{SURV}\ncovariates = ["age", "sex", "ph.ecog"]\nstrata = ["site"]',
    f'id = "cox_ridge"\ntype = "cox"\n{SURV}\ncovariates = ["age", "sex", "ph.ecog"]\npenalizer = 0.1',
]
GBSG_SUITE = [
    'id = "d"\ntype = "describe"\nvariables = ["age", "tgrade", "horTh"]\nquantiles = []',
    'id = "x"\ntype = "crosstab"\nrow = "horTh"\ncolumn = "tgrade"',
    'id = "logit"\ntype = "logistic"\noutcome = "cens"\ncovariates = ["horTh", "age", "tgrade", "pnodes"]',
    'id = "km"\ntype = "kaplan_meier"\nduration = "time"\nevent = "cens"\ngroup = "horTh"',
    'id = "lr"\ntype = "logrank"\nduration = "time"\nevent = "cens"\ngroup = "tgrade"',
    'id = "cox"\ntype = "cox"\nduration = "time"\nevent = "cens"\ncovariates = ["horTh", "age", "tgrade", "pnodes"]',
]


def _sites(tmp_path, frames, name, policy=PERMISSIVE):
    return [make_site(tmp_path / name / site, rows, policy) for site, rows in frames.items()]


def _assert_close(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12), path
    else:
        assert a == b, path


@pytest.mark.parametrize("data", ["lung by institution", "gbsg2"])
def test_every_analysis_gives_the_same_result_masked_as_in_the_clear(tmp_path, data):
    frames, suite = (lung_institutions(), LUNG_SUITE) if data == "lung by institution" else (gbsg2_sites(), GBSG_SUITE)
    masked, run = study(_sites(tmp_path, frames, "masked"), protocol_text(*suite))
    clear_text = protocol_text(*suite) + "[privacy]\nsecure_aggregation = false\n"
    clear, clear_run = study(_sites(tmp_path, frames, "clear"), clear_text)
    assert run.summary()["mode"] == "masked" and clear_run.summary()["mode"] == "clear"
    for result in masked.values():
        assert "error" not in result, result
    _assert_close(masked, clear)
    assert masked == clear  # both sum exactly in the same fixed-point ring: identical bits


def test_the_coordinator_receives_only_uniform_noise_uncorrelated_with_the_data(tmp_path):
    frames = {k: rows for k, (_, rows) in lung_hospitals().items()}
    folders = _sites(tmp_path, frames, "sites")
    text = protocol_text(f'id = "km"\ntype = "kaplan_meier"\n{SURV}\ngroup = "sex"')
    longest = int(pd.concat(frames.values()).time.max())
    assert longest == 1022
    truth = np.zeros((2, 1024))  # hospital-1's true removals per sex and day of the public axis (1022 → 1024 cells)
    for (sex, time), count in frames["hospital-1"].groupby(["sex", "time"]).size().items():
        truth[int(sex) - 1, int(time)] = count
    received = []
    for _ in range(4):  # the same study again: fresh keys every time
        _, run = study(folders, text)
        counts_round = next(a for a in run.transcript if a.tag == "2.1")
        received.append(counts_round.received["hospital-1"]["km/removed"])
        assert received[-1].dtype == np.uint64 and received[-1].shape == truth.shape  # counts: 64-bit words
    bits = np.unpackbits(np.stack(received).view(np.uint8), axis=-1).reshape(-1, 64)
    assert abs(bits.mean() - 0.5) < 4 * 0.5 / np.sqrt(bits.size)  # a fair coin overall …
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 5 * 0.5 / np.sqrt(bits.shape[0]))  # … at every bit position
    masked = np.concatenate([r.ravel().astype(float) for r in received])
    assert abs(np.corrcoef(masked, np.tile(truth.ravel(), len(received)))[0, 1]) < 0.1
    assert not np.array_equal(received[0], received[1])  # same data, unrelated masked values


class DropsOut(NodeFolders):
    """One site stops answering at a chosen round, after the keys were exchanged."""

    site, at = "hospital-3", 1

    def send(self, request: Request, sites: list[str] | None) -> tuple[list[Reply], dict[str, str]]:
        if request.queries and request.round == self.at and (sites is None or self.site in sites):
            replies, failures = super().send(request, [s for s in sites or self.folders if s != self.site])
            return replies, {**failures, self.site: "no reply within 600 s"}
        return super().send(request, sites)


def test_a_site_dropping_after_the_key_exchange_is_left_out_and_the_study_completes_labelled(tmp_path):
    frames = {k: rows for k, (_, rows) in lung_hospitals().items()}
    folders = _sites(tmp_path, frames, "sites")
    block = 'id = "d"\ntype = "describe"\nvariables = ["age"]\nquantiles = []'  # three rounds: moments, spread
    results, run = study(folders, protocol_text(block), exchange=DropsOut)
    summary = run.summary()
    assert summary["dropped"] == {"hospital-3": "no reply within 600 s"}
    assert summary["contributors"] == ["hospital-1", "hospital-2", "hospital-4", "hospital-5"]
    rest = pd.concat(rows for site, rows in frames.items() if site != "hospital-3")
    assert results["d"]["variables"]["age"]["mean"] == pytest.approx(rest.age.mean(), abs=1e-12)
    tags = [(a.tag, a.mode, sorted(a.failed)) for a in run.transcript]
    assert tags == [("keys.1.1", "keys", []), ("1.1", "masked", ["hospital-3"]), ("1.2", "masked", []),
                    ("2.1", "masked", []), ("3.1", "masked", [])]  # fmt: skip
    assert "hospital-3" not in run.transcript[2].sites and "hospital-3" not in run.transcript[2].offers


def test_a_site_dropping_after_it_contributed_stops_the_running_analyses(tmp_path):
    frames = {k: rows for k, (_, rows) in lung_hospitals().items()}
    DropsOut.at = 2
    try:
        results, run = study(_sites(tmp_path, frames, "sites"), protocol_text('id = "d"\ntype = "describe"\nvariables = ["age"]'),
                             exchange=DropsOut)  # fmt: skip
    finally:
        DropsOut.at = 1
    assert results["d"]["error"].startswith(
        "site hospital-3 stopped answering (no reply within 600 s) after contributing"
    )
    assert all(a.mode != "masked" or not a.failed or a.tag == "2.1" for a in run.transcript)


class SwapsAKey(NodeFolders):
    """A dishonest coordinator substitutes its own key for hospital-2's when relaying offers."""

    def send(self, request: Request, sites: list[str] | None) -> tuple[list[Reply], dict[str, str]]:
        peers = request.secure.get("peers")
        if peers:
            fake = (
                X25519PrivateKey.generate()
                .public_key()
                .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            )
            peers["hospital-2"] = {**peers["hospital-2"], "key": base64.b64encode(fake).decode()}
        return super().send(request, sites)


def test_a_coordinator_swapping_a_public_key_is_detected_by_the_nodes(tmp_path):
    folders = _sites(tmp_path, {k: rows for k, (_, rows) in lung_hospitals().items()}, "sites")
    with pytest.raises(
        StudyError, match="the key relayed for site 'hospital-2' is not signed by its pinned identity key"
    ):
        study(folders, protocol_text('id = "d"\ntype = "describe"\nvariables = ["age"]'), exchange=SwapsAKey)


class ReplaysARound(NodeFolders):
    """A dishonest coordinator sends a masked round twice under the same tag (to difference the replies)."""

    def send(self, request: Request, sites: list[str] | None) -> tuple[list[Reply], dict[str, str]]:
        if request.secure.get("mode") == "masked":
            super().send(request, sites)
        return super().send(request, sites)


def test_a_coordinator_replaying_a_round_tag_is_refused_by_the_nodes(tmp_path):
    folders = _sites(tmp_path, {k: rows for k, (_, rows) in lung_hospitals().items()}, "sites")
    with pytest.raises(StudyError, match=r"round 1\.1 of this study was masked before; refusing to reuse its masks"):
        study(folders, protocol_text('id = "d"\ntype = "describe"\nvariables = ["age"]'), exchange=ReplaysARound)


def test_fewer_than_three_sites_follow_each_sites_policy(tmp_path):
    frames = {k: rows for k, (_, rows) in list(lung_hospitals().items())[:2]}
    describe = 'id = "d"\ntype = "describe"\nvariables = ["age"]'
    results, run = study(_sites(tmp_path, frames, "open"), protocol_text(describe))
    assert run.summary()["mode"] == "clear" and "error" not in results["d"]
    strict = _sites(tmp_path, frames, "strict", policy="min_cell_count = 5")
    with pytest.raises(StudyError, match="only under secure aggregation .* this round has 2 site\\(s\\)"):
        study(strict, protocol_text(describe))


def test_a_value_beyond_the_exact_range_is_refused_not_wrapped(tmp_path):
    frames = {k: rows.assign(huge=1e16) for k, (_, rows) in lung_hospitals().items()}
    results, _ = study(
        _sites(tmp_path, frames, "sites"), protocol_text('id = "d"\ntype = "describe"\nvariables = ["huge"]')
    )
    assert "beyond the exact range ±2^53" in results["d"]["error"]


def test_fixed_point_encoding_is_exact_and_sums_do_not_depend_on_order():
    rng = np.random.default_rng(7)
    values = rng.normal(size=3000) * 10.0 ** rng.integers(-30, 15, size=3000)
    for value, limbs in zip(values, fixed_point.encode(values), strict=True):
        integer = int(limbs[0]) + (int(limbs[1]) << 64)
        integer -= (integer >> 127) << 128
        scaled = Fraction(float(value)) * 2**64
        assert abs(scaled - integer) <= Fraction(1, 2)
    parts = [fixed_point.encode(rng.normal(size=100) * 1e9) for _ in range(30)]
    forward = fixed_point.total(parts)
    assert np.array_equal(forward, fixed_point.total(parts[::-1]))
    exact = sum((Fraction(float(x)) for x in np.stack([fixed_point.decode(p) for p in parts])[:, 0]), Fraction(0))
    assert fixed_point.decode(forward)[0] == pytest.approx(float(exact), rel=1e-15)
    with pytest.raises(fixed_point.OutOfRange, match="not finite"):
        fixed_point.encode(np.array([np.inf]))


def test_the_demo_transcript_holds_only_masked_arrays(tmp_path):
    folders = _sites(tmp_path, {k: rows for k, (_, rows) in lung_hospitals().items()}, "sites")
    results, run = study(folders, protocol_text('id = "d"\ntype = "describe"\nvariables = ["age"]'))
    for attempt in run.transcript:
        for site, arrays in attempt.received.items():
            for name, value in arrays.items():
                if not name.startswith("d/kind") and not name.startswith("d/levels"):
                    assert value.dtype == np.uint64, (attempt.tag, site, name)  # masked words or limbs
    assert json.dumps(run.summary())


def test_the_sparse_masking_graph_is_a_symmetric_harary_graph_drawn_from_the_offers():
    keys = {f"site-{k:02d}": bytes([k]) * 32 for k in range(40)}
    graph = {site: masking.neighbours(site, keys, "study", SPARSE_GRAPH) for site in keys}
    assert all(len(peers) == 2 * 6 for peers in graph.values())  # 2⌈log₂ 40⌉
    assert all(site in graph[peer] for site, peers in graph.items() for peer in peers)  # pairwise masks cancel
    rng = np.random.default_rng(3)
    for _ in range(50):  # fewer colluders than the degree never split the honest sites
        colluders = set(rng.choice(sorted(keys), size=11, replace=False))
        honest = [site for site in keys if site not in colluders]
        reached, frontier = {honest[0]}, [honest[0]]
        while frontier:
            frontier = [p for site in frontier for p in graph[site] if p not in colluders and p not in reached]
            reached.update(frontier)
        assert reached == set(honest)
    other = {site: masking.neighbours(site, {**keys, "site-00": b"\x07" * 32}, "study", SPARSE_GRAPH) for site in keys}
    assert other != graph  # another key, another order: the coordinator cannot choose the graph
    assert masking.neighbours("site-00", dict(list(keys.items())[:9]), "study", SPARSE_GRAPH) == sorted(
        list(keys)[1:9]
    )  # small rounds: 2⌈log₂ 9⌉ = 8 neighbours is everyone


class Recording(NodeFolders):
    """Keeps the masking graph of every masked round."""

    graphs: list[str] = []

    def send(self, request: Request, sites: list[str] | None) -> tuple[list[Reply], dict[str, str]]:
        if request.secure.get("peers"):
            Recording.graphs.append(request.secure["graph"])
        return super().send(request, sites)


def test_a_sparse_graph_sums_exactly_and_a_site_can_require_the_full_graph(tmp_path):
    frames = partition(actg175(), 24)
    text = protocol_text('id = "d"\ntype = "describe"\nvariables = ["age", "karnof"]\nquantiles = []',
                         'id = "cox"\ntype = "cox"\nduration = "days"\nevent = "cens"\ncovariates = ["age", "cd40"]')  # fmt: skip
    sparse, runner = study(_sites(tmp_path, frames, "sparse"), text, exchange=Recording)
    assert set(Recording.graphs) == {SPARSE_GRAPH}
    clear, _ = study(_sites(tmp_path, frames, "clear"), text + "[privacy]\nsecure_aggregation = false\n")
    assert sparse == clear  # the same bits as in the clear
    review = steward.preview(open_site(runner.folders["site-001"]), runner.protocol)
    assert (
        "each site masks with 10 of the 23 others (a sparse graph drawn at random from the sites' signed keys); "
        "this site's share is exposed only if the coordinator and all 10 of its neighbours collude"
    ) in review
    strict = _sites(tmp_path, frames, "strict")
    (strict[3] / "site.toml").write_text((strict[3] / "site.toml").read_text() + "full_masking_graph = true\n")
    assert "every site masks with all 23 others" in steward.preview(open_site(strict[3]), runner.protocol)
    Recording.graphs = []
    full, _ = study(strict, text, exchange=Recording)
    assert set(Recording.graphs) == {FULL_GRAPH} and full == clear

    class Cheats(NodeFolders):
        def send(self, request: Request, sites: list[str] | None) -> tuple[list[Reply], dict[str, str]]:
            if request.secure.get("peers"):
                request.secure["graph"] = SPARSE_GRAPH
            return super().send(request, sites)

    with pytest.raises(StudyError, match=r"site site-004: this site's policy masks only with every other site"):
        study(strict, text, exchange=Cheats)
