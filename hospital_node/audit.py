"""The site's tamper-evident audit log: `state/audit.jsonl`, one JSON entry per line.

Each entry holds `seq`, `time`, `event`, its fields, `prev` (the previous entry's hash)
and `hash` = SHA-256 of the entry without `hash`, serialized as canonical JSON
(RFC 8785). Editing, deleting or reordering entries breaks the chain, which
`verify` reports. Appends hold a file lock, write one whole line and fsync before
returning, so an entry that was reported written survives a crash; a line cut short
by a crash was never reported written and is discarded before the next append.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import rfc8785

GENESIS = "0" * 64
FILE = "audit.jsonl"

_CACHE: dict[Path, tuple[int, int, list[dict[str, Any]]]] = {}
"""Per log file: inode, bytes parsed, entries parsed (see `AuditLog.entries`)."""
_VERIFIED: dict[Path, tuple[int, str, int, str]] = {}
"""Per log file: bytes verified, their SHA-256, entries and head (see `AuditLog.verify`)."""


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of an entry (without its `hash`) as canonical JSON."""
    body = {key: value for key, value in entry.items() if key != "hash"}
    return hashlib.sha256(rfc8785.dumps(body)).hexdigest()


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    head: str
    """Hash of the last intact entry."""
    problem: str = ""
    incomplete_tail: bool = False
    """The file ends in a line cut short by a crash (never committed; dropped at the next append)."""


class AuditLog:
    def __init__(self, state: Path) -> None:
        self.path = state / FILE
        self._lock_path = state / "audit.lock"
        self._unsynced = False
        """Entries this object wrote without forcing them to disk (see `append_many`)."""

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one entry durably and return it."""
        return self.append_many([(event, fields)])[0]

    def append_many(self, events: list[tuple[str, dict[str, Any]]], durable: bool = True) -> list[dict[str, Any]]:
        """Write entries (event, fields) in order with one write and return them.

        Durable (the default): forced to disk with one fsync, which also commits every entry this
        object wrote before with `durable=False` (even when `events` is empty). A node writes a request
        entry non-durably before it reads any data, and makes it durable with what it releases, before
        anything leaves.
        """
        if not events:
            if durable and self._unsynced:
                _fsync(self.path)
                self._unsynced = False
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            last = self._discard_incomplete_tail()
            written = []
            for event, fields in events:
                entry = {
                    "seq": last["seq"] + 1 if last else 1,
                    "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                    "event": event,
                    **fields,
                    "prev": last["hash"] if last else GENESIS,
                }
                entry["hash"] = entry_hash(entry)
                written.append(entry)
                last = entry
            lines = b"".join(
                (json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n").encode() for e in written
            )
            created = not self.path.exists()
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(descriptor, lines)
                if durable:
                    os.fsync(descriptor)
            finally:
                os.close(descriptor)
            if created:
                _fsync(self.path.parent)
        self._unsynced = not durable
        return written

    def entries(self) -> list[dict[str, Any]]:
        """Every committed entry (an incomplete last line is not one).

        Parsed incrementally: a log that only grew since the last call in this process is
        read from where that call stopped. `verify` always reads everything.
        """
        if not self.path.exists():
            return []
        stat = self.path.stat()
        inode, offset, parsed = _CACHE.get(self.path, (stat.st_ino, 0, []))
        if inode != stat.st_ino or offset > stat.st_size:
            offset, parsed = 0, []
        with open(self.path, "rb") as stream:
            stream.seek(offset)
            data = stream.read()
        end = data.rfind(b"\n") + 1
        parsed = parsed + [json.loads(line) for line in data[:end].decode("utf-8").splitlines() if line]
        _CACHE[self.path] = (stat.st_ino, offset + end, parsed)
        return list(parsed)

    def verify(self) -> Verification:
        """Recompute the chain; report the first entry that is not intact.

        Entries this process already verified are skipped only if the bytes holding them
        still hash to what they did then, so any edit of them is seen.
        """
        data = self.path.read_bytes() if self.path.exists() else b""
        committed = data[: data.rfind(b"\n") + 1]
        start, count, head = 0, 0, GENESIS
        known = _VERIFIED.get(self.path)
        if known and len(committed) >= known[0] and hashlib.sha256(committed[: known[0]]).hexdigest() == known[1]:
            start, count, head = known[0], known[2], known[3]
        for line in committed[start:].decode("utf-8").splitlines():
            number = count + 1
            where = f"entry {number} (line {number})"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                return Verification(False, count, head, f"{where} is not valid JSON (edited?)")
            if not isinstance(entry, dict) or entry.get("seq") != number:
                return Verification(False, count, head, f"{where} is out of sequence (entries deleted or reordered?)")
            if entry.get("prev") != head:
                return Verification(
                    False, count, head, f"{where} does not link to the previous entry (deleted or reordered?)"
                )
            if entry.get("hash") != entry_hash(entry):
                return Verification(False, count, head, f"{where} does not match its hash (edited?)")
            head, count = entry["hash"], number
        _VERIFIED[self.path] = (len(committed), hashlib.sha256(committed).hexdigest(), count, head)
        return Verification(True, count, head, incomplete_tail=len(committed) != len(data))

    def _discard_incomplete_tail(self) -> dict[str, Any] | None:
        """Drop a line cut short by a crash; return the last committed entry."""
        if not self.path.exists():
            return None
        size = self.path.stat().st_size
        data = _tail(self.path)
        end = data.rfind(b"\n") + 1
        if end != len(data):
            os.truncate(self.path, size - len(data) + end)
        if end == 0:
            return None
        return json.loads(data[data.rfind(b"\n", 0, end - 1) + 1 : end])

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _tail(path: Path) -> bytes:
    """The end of the file, long enough to hold its last two line breaks (or all of it)."""
    size, chunk = path.stat().st_size, 1 << 16
    with open(path, "rb") as stream:
        while True:
            stream.seek(max(0, size - chunk))
            data = stream.read()
            if chunk >= size or data.count(b"\n") >= 2:
                return data
            chunk *= 4


def _fsync(path: Path) -> None:
    """Force a file's (or a folder's) content to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
