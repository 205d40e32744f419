"""How a deployed study's outputs reach the researcher who submitted it, on any machine.

Open-source Flower 1.42 offers a run's log as the one channel from a ServerApp back to whoever
submitted the run (`flwr run --stream`, the Control API's StreamLogs); its artifact download needs
Flower's enterprise edition. So the coordinator's ServerApp packs the outputs folder (results.json,
transcript, model files and cards, and `status.json`) into a tar archive, seals it to the
submission's reply key (`workbench.sealed`) and prints it into the log as framed base64 lines; the
researcher's command reads the framed lines out of the stream, checks the SHA-256, unseals and
unpacks them into `--out`. Everything else in the log is progress, shown as it comes. A request the
coordinator refuses before anything runs (an unknown researcher) comes back as a clear-text error
frame, which holds no data.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

MARK = "@@workbench"
CHUNK = 48_000
"""Base64 characters per log line."""


def pack(folder: Path) -> bytes:
    """A tar.gz of everything in `folder` (paths relative to it)."""
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w:gz", compresslevel=1) as archive:
        for path in sorted(folder.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return stream.getvalue()


def unpack(data: bytes, out: Path) -> list[Path]:
    """Extract a `pack`ed archive into `out`, replacing what it holds there; the top-level paths written."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".handback-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            archive.extractall(staging, filter="data")  # no absolute paths, links or devices
        return place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def place(folder: Path, out: Path) -> list[Path]:
    """Move everything in `folder` into `out`, replacing what `out` holds under the same names; return it."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in sorted(folder.iterdir()):
        target = out / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        shutil.move(entry, target)
        written.append(target)
    return written


def frames(kind: str, payload: bytes) -> Iterable[str]:
    """The log lines carrying `payload`: a header (kind, SHA-256, size), base64 chunks, an end line."""
    text = base64.b64encode(payload).decode()
    yield f"{MARK} {kind} {hashlib.sha256(payload).hexdigest()} {len(payload)}\n"
    for start in range(0, len(text), CHUNK):
        yield f"{MARK}+ {text[start : start + CHUNK]}\n"
    yield f"{MARK} end\n"


class Reader:
    """Separates framed payloads from the rest of a log stream, line by line."""

    def __init__(self, show: Callable[[str], None]) -> None:
        self.show = show
        self.payloads: dict[str, bytes] = {}
        self.problems: list[str] = []
        self._open: tuple[str, str, int] | None = None
        self._chunks: list[str] = []

    def feed(self, line: str) -> None:
        stripped = line.strip()
        if stripped.startswith(f"{MARK}+ ") and self._open:
            self._chunks.append(stripped[len(MARK) + 2 :])
        elif stripped == f"{MARK} end" and self._open:
            kind, digest, size = self._open
            try:
                payload = base64.b64decode("".join(self._chunks), validate=True)
            except ValueError:  # binascii.Error: characters lost or changed on the way
                payload = b""
            if len(payload) != size or hashlib.sha256(payload).hexdigest() != digest:
                self.problems.append(f"the {kind} frame arrived damaged ({len(payload)} of {size} bytes)")
            else:
                self.payloads[kind] = payload
            self._open, self._chunks = None, []
        elif stripped.startswith(f"{MARK} "):
            parts = stripped.split()
            if len(parts) == 4 and parts[3].isdigit():
                self._open, self._chunks = (parts[1], parts[2], int(parts[3])), []
        elif not self._open:
            self.show(line)
