"""One request at a time per site, across every process that serves it.

A node may serve several studies at once (two researchers' studies on one federation, or Flower's
stock runtime starting one ClientApp process per message). What a site decides from its state and
then writes back — the differencing guard (is this row set too close to one released before?) and
the privacy budget (would this round exceed ε?) — must not interleave, or two studies could each
pass a check that only one of them may pass. So every request holds the site's lock (`fcntl.flock`
on `state/node.lock`) from admission to its logged reply; other sites are never blocked by it.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def site_lock(folder: str | Path) -> Iterator[None]:
    """Hold `folder`'s site lock (nothing to hold for a folder that is not there: the request fails anyway)."""
    state = Path(folder) / "state"
    if not Path(folder).is_dir():
        yield
        return
    state.mkdir(exist_ok=True)
    with open(state / "node.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
