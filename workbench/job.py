"""A study run started by the dashboard: `python -m workbench.job RUN_FOLDER`.

Runs the `workbench` command stored in `RUN_FOLDER/job.json` (its output goes to the run's log)
and records the exit code in `status.json`, so the dashboard can follow it across page switches
and restarts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from workbench.cli import main


def run(folder: Path) -> int:
    arguments = json.loads((folder / "job.json").read_text())["arguments"]
    try:
        code = main(arguments)
    except BaseException as error:  # recorded, so the dashboard never waits forever
        print(f"error: the run stopped ({type(error).__name__}: {error})", file=sys.stderr, flush=True)
        code = 2
    (folder / "status.json").write_text(json.dumps({"exit_code": code}))
    return code


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
