"""A site's long-term identity key (Ed25519): it signs the site's secure-aggregation keys.

Kept in `state/identity/node_key` (OpenSSH private key, readable by the node's user only).
Its public line goes into a study protocol's `[federation.sites]`, where every peer pins it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hospital_node.site import Site


def identity_key(site: Site) -> Ed25519PrivateKey:
    """The site's identity key, created on first use."""
    path = site.state / "identity" / "node_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(pem)
        (path.parent / "node_key.pub").write_text(public_line(key) + "\n", encoding="utf-8")
    return _load(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _load(path: Path, _mtime: int) -> Ed25519PrivateKey:
    """The key in `path` (remembered per file version: a node reads it for every masked reply)."""
    key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: the identity key must be ssh-ed25519")
    return key


def existing_public_line(site: Site) -> str | None:
    """The site's identity key line if it has one (never creates it)."""
    path = site.state / "identity" / "node_key.pub"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def public_line(key: Ed25519PrivateKey) -> str:
    """`ssh-ed25519 AAAA…`: the form a protocol's `[federation.sites]` pins."""
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
