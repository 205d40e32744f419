"""Several studies at one site at once: requests never interleave, and each sees what the others recorded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analyses.disclosure import Refused
from hospital_node.ledger import Ledger
from hospital_node.privacy_ledger import PrivacyLedger

WORKER = """
import sys, time
from pathlib import Path
from hospital_node.exclusive import site_lock
from hospital_node.privacy_ledger import PrivacyLedger
folder, name = Path(sys.argv[1]), sys.argv[2]
for round_number in range(1, 16):
    with site_lock(folder):
        with open(folder / "trace.txt", "a") as trace:
            trace.write(f"start {name}\\n")
        PrivacyLedger(folder / "state").record(name, name, [(1.1, 0.01, 10)], 1e-5, round_number)
        time.sleep(0.002)
        with open(folder / "trace.txt", "a") as trace:
            trace.write(f"end {name}\\n")
"""


def test_two_processes_serving_one_site_take_turns_and_lose_no_ledger_entry(tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(folder), name]) for name in ("study-a", "study-b")]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]
    trace = (folder / "trace.txt").read_text().split("\n")[:-1]
    assert len(trace) == 60
    for start, end in zip(trace[::2], trace[1::2], strict=True):  # never another request inside one
        assert start.startswith("start ") and end == start.replace("start", "end")
    trainings = PrivacyLedger(folder / "state").read()["trainings"]
    assert {key: item["rounds"] for key, item in trainings.items()} == {
        "study-a": list(range(1, 16)), "study-b": list(range(1, 16))
    }  # fmt: skip


def test_the_differencing_guard_sees_a_row_set_another_process_recorded(tmp_path):
    state = tmp_path / "state"
    ledger = Ledger(state)
    everyone = np.arange(100)
    ledger.check(everyone, 5, ["age"])
    ledger.record(everyone, ["age"], {"study": "first"})
    # Meanwhile another study's request, in another process, releases about patients 10 … 99.
    other = f"import numpy as np; from pathlib import Path; from hospital_node.ledger import Ledger; " \
            f"Ledger(Path({str(state)!r})).record(np.arange(10, 100), ['age'], {{'study': 'second'}})"  # fmt: skip
    subprocess.run([sys.executable, "-c", other], check=True)
    with pytest.raises(Refused, match="differencing guard"):
        ledger.check(np.arange(11, 100), 5, ["age"])  # one patient from the other process's set
    assert Path(state / "rowsets" / "index.jsonl").read_text().count("\n") == 2
