"""Measuring a change side by side with what it replaced: another git revision of this project, checked out
into a temporary worktree and run with this Python environment (its own code first on the path)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """A temporary worktree of `revision`, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="baseline-") as folder:
        tree = Path(folder) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), revision], check=True,
                       capture_output=True)  # fmt: skip
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def environment(tree: Path) -> dict[str, str]:
    """The environment that makes Python import `tree`'s packages rather than this checkout's."""
    return {**os.environ, "PYTHONPATH": str(tree)}


def run_own_copy(revision: str, script: str, arguments: Sequence[str]) -> None:
    """Run `revision`'s own copy of the benchmark `script` with `arguments`; its output goes to ours."""
    with checkout(revision) as tree:
        print(f"# baseline: revision {revision}, its own bench/{script}", flush=True)
        subprocess.run([sys.executable, str(tree / "bench" / script), *arguments], check=True, cwd=tree,
                       env=environment(tree))  # fmt: skip
