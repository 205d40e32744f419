"""The audit log is tamper-evident and crash-safe; the steward's commands read it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hospital_node import audit
from hospital_node.audit import AuditLog
from tests.conftest import make_site, protocol_text, roster, study
from workbench.datasets import lung_hospitals
from workbench.errors import StudyError

DESCRIBE = 'id = "ages"\ntype = "describe"\nvariables = ["age"]'


def workbench(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workbench.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def site(tmp_path):
    folder = make_site(tmp_path / "hospital-1", lung_hospitals()["hospital-1"][1])
    study([folder], protocol_text(DESCRIBE))
    return folder


def _lines(folder: Path) -> list[str]:
    return (folder / "state" / "audit.jsonl").read_text().splitlines()


def _write(folder: Path, lines: list[str]) -> None:
    (folder / "state" / "audit.jsonl").write_text("\n".join(lines) + "\n")


def test_intact_chain_verifies(site):
    done = workbench("node", "audit", "verify", "--site", site)
    assert done.returncode == 0
    assert done.stdout.startswith(f"hospital-1: audit log intact: {len(_lines(site))} entries, head ")


def _relinked(line: str, previous: str) -> str:
    """An entry moved up one place with its sequence number and link fixed (but not its hash)."""
    entry = json.loads(line)
    return json.dumps({**entry, "seq": entry["seq"] - 1, "prev": json.loads(previous)["hash"]})


@pytest.mark.parametrize(
    "tamper, problem",
    [
        (lambda lines: [*lines[:2], lines[2].replace('"round":1', '"round":2'), *lines[3:]],
         "entry 3 (line 3) does not match its hash (edited?)"),
        (lambda lines: [*lines[:2], *lines[3:]], "entry 3 (line 3) is out of sequence (entries deleted or reordered?)"),
        (lambda lines: [*lines[:2], lines[3], lines[2], *lines[4:]], "entry 3 (line 3) is out of sequence"),
        (lambda lines: lines[:-1], None),  # dropping the tail cannot be seen inside the log: see the results' audit head
        (lambda lines: [lines[0], _relinked(lines[2], lines[0]), *lines[3:]],
         "entry 2 (line 2) does not match its hash (edited?)"),
    ],
)  # fmt: skip
def test_edits_deletions_and_reordering_are_caught(site, tamper, problem):
    _write(site, tamper(_lines(site)))
    done = workbench("node", "audit", "verify", "--site", site)
    if problem is None:
        assert done.returncode == 0
        return
    assert done.returncode == 1
    assert f"audit log BROKEN: {problem}" in done.stdout


def test_a_broken_chain_makes_the_node_refuse_everything(site):
    lines = _lines(site)
    assert '"by":"test steward"' in lines[0]
    _write(site, [lines[0].replace("test steward", "someone else"), *lines[1:]])
    with pytest.raises(
        StudyError, match=r"the site's audit log is broken \(entry 1 \(line 1\) does not match its hash"
    ):
        study([site], protocol_text(DESCRIBE), approve=False)


def test_a_tail_dropped_after_a_study_is_caught_by_the_head_the_coordinator_recorded(site):
    _, exchange = study([site], protocol_text(DESCRIBE, 'id = "more"\ntype = "describe"\nvariables = ["time"]'))
    recorded = exchange.replies["hospital-1"].audit_head
    _write(site, _lines(site)[:-2])
    assert AuditLog(site / "state").verify().head != recorded


WRITER = """
import sys
from pathlib import Path
from hospital_node.audit import AuditLog
log = AuditLog(Path(sys.argv[1]))
for i in range(100000):
    entry = log.append("release", analysis="a", round=i, items=[{"name": "x" * 2000}])
    print(entry["seq"], flush=True)
"""


def test_a_killed_writer_never_breaks_the_chain_or_loses_a_reported_entry(tmp_path):
    for attempt in range(5):
        state = tmp_path / f"state{attempt}"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(state)], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0 + 0.13 * attempt)
        writer.send_signal(signal.SIGKILL)
        reported = [int(line) for line in writer.communicate()[0].split()]
        log = AuditLog(state)
        result = log.verify()
        assert result.ok, result.problem
        assert result.entries >= len(reported) > 0  # every entry reported written is there
        log.append("request", note="after the crash")
        assert log.verify().ok and not log.verify().incomplete_tail


def test_a_request_is_forced_to_disk_with_the_release_that_answers_it(tmp_path, monkeypatch):
    synced: list[str] = []
    fsync = os.fsync
    monkeypatch.setattr(audit.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), fsync(fd)))

    def log_syncs() -> int:
        return sum(path.endswith(audit.FILE) for path in synced)

    log = AuditLog(tmp_path)
    log.append_many([("request", {"round": 1})], durable=False)
    assert log_syncs() == 0 and log.verify().entries == 1  # written before any data is read, not yet forced
    log.append_many([])  # nothing released: the request alone is committed
    assert log_syncs() == 1
    log.append_many([])
    assert log_syncs() == 1
    log.append_many([("request", {"round": 2})], durable=False)
    log.append_many([("release", {"round": 2}), ("release", {"round": 2})])
    assert log_syncs() == 2  # one fsync per answered request
    assert log.verify().ok and log.verify().entries == 4


def test_steward_commands_approve_revoke_list_and_meter(tmp_path):
    folder = make_site(tmp_path / "hospital-2", lung_hospitals()["hospital-2"][1])
    protocol = tmp_path / "study.toml"
    protocol.write_text(protocol_text(DESCRIBE) + roster([folder]))
    review = workbench("node", "approve", protocol, "--site", folder, "--yes", "--by", "Dr. Steward")
    assert review.returncode == 0, review.stderr
    assert "Analysis 'ages' (describe) reads: age" in review.stdout
    assert "moments   n:*" in review.stdout and "→ sent if each count is 0 or ≥ 5, else refused" in review.stdout
    assert "Nothing else leaves the site" in review.stdout
    assert (
        "Secure aggregation: ON" in review.stdout
        and "Peers pinned by the protocol (1): hospital-2 SHA256:" in review.stdout
    )
    listed = workbench("node", "approvals", "--site", folder)
    assert "1 approved protocol(s)" in listed.stdout and "by Dr. Steward" in listed.stdout
    refused = workbench("node", "approve", protocol, "--site", folder)  # no terminal, no --yes
    assert refused.returncode == 2 and "answer the prompt in a terminal, or pass --yes" in refused.stderr
    study([folder], protocol.read_text(), approve=False)
    usage = workbench("node", "usage", "--site", folder)
    assert "test" in usage.stdout and " 3        3        0     46" in usage.stdout  # clear: no quantile search
    sha = listed.stdout.splitlines()[1].split()[0]
    revoked = workbench("node", "revoke", sha[:10], "--site", folder, "--by", "Dr. Steward")
    assert revoked.returncode == 0 and "revoked the approval" in revoked.stdout
    assert "no approved protocols" in workbench("node", "approvals", "--site", folder).stdout
    restricted = tmp_path / "restricted"
    make_site(restricted, lung_hospitals()["hospital-3"][1], policy='allowed_analyses = ["cox"]')
    blocked = workbench("node", "approve", protocol, "--site", restricted, "--yes")
    assert blocked.returncode == 2
    assert (
        "restricted cannot approve this protocol: analysis 'ages': the site's policy does not allow 'describe'"
        in blocked.stderr
    )


LIGHT = """
import json, sys
from workbench.cli import main
for command in json.loads(sys.argv[1]):
    main(command)
heavy = ("torch", "opacus", "monai", "scipy", "lifelines", "flwr", "ray", "streamlit")
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules} & set(heavy))))
"""


def test_the_light_commands_load_no_heavy_library(tmp_path):
    """What keeps the steward's commands and `validate` quick: none of them imports torch, scipy, Flower …"""
    folder = make_site(tmp_path / "hospital-2", lung_hospitals()["hospital-2"][1])
    protocol = tmp_path / "study.toml"
    protocol.write_text(protocol_text(DESCRIBE) + roster([folder]))
    commands = [["validate", str(protocol)], ["node", "identity", "--site", str(folder)],
                ["node", "approve", str(protocol), "--site", str(folder), "--yes"],
                ["node", "audit", "verify", "--site", str(folder)], ["node", "approvals", "--site", str(folder)]]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", LIGHT, json.dumps(commands)], capture_output=True, text=True,
                          check=False, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
