"""Pairwise additive masking (Bonawitz et al.; a sparse graph as in SecAgg+): a site's replies look random, their
sum is exact.

Each site has one X25519 key per study, signed with its Ed25519 identity key and offered in its
replies. For a masked round the coordinator relays the participants' offers; each site checks every
signature against the identity keys pinned in the approved protocol and masks with its neighbours
in the round's masking graph:

- `full`: every other participant;
- `sparse` (the default): a Harary graph — the participants in a random order, each joined to the
  ⌈log₂ N⌉ nearest on either side (degree 2⌈log₂ N⌉; the full graph when that reaches N − 1). The
  order is drawn from a hash of all the verified, signed offers, so the coordinator cannot choose it.

Per neighbour a 32-byte seed comes from X25519 and HKDF-SHA256 (bound to the study and the pair);
per round attempt and analysis it is expanded with ChaCha20 into one mask over that analysis'
arrays, added (or subtracted, by site-id order) to the fixed-point encoded values modulo 2¹²⁸.
Every mask appears once with each sign, so they cancel in the total. All primitives come from
the `cryptography` library.

What it hides: the coordinator learns only the total of the honest sites. With the full graph a
site's share is exposed only if the coordinator and all other participants collude. The sparse
graph is 2⌈log₂ N⌉-connected: fewer colluding sites than that cannot split the honest sites, so
they learn nothing more than with the full graph; a site's share is exposed only if all its
2⌈log₂ N⌉ neighbours collude with the coordinator.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
from collections.abc import Mapping
from typing import Protocol

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from analyses import fixed_point
from analyses.contract import Contribution
from workbench.messages import FULL_GRAPH

MINIMUM_SITES = 3
"""With fewer sites, the sum minus one's own contribution is the other site's."""

class MaskingError(Exception):
    """A key offer is not authentic or cannot be used; the message names the site."""


class KeyStore(Protocol):
    """Where a node keeps its private key per study (never sent)."""

    def get(self, name: str) -> bytes | None: ...

    def put(self, name: str, value: bytes) -> None: ...


def study_key(identity: Ed25519PrivateKey, site: str, study: str, store: KeyStore) -> tuple[bytes, dict[str, str]]:
    """This site's private X25519 key for the study (created on first use) and its signed offer."""
    private = store.get(study)
    if private is None:
        private = X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        store.put(study, private)
    public = _public(private)
    return private, {"key": _b64(public), "signature": _b64(identity.sign(_signed(study, site, public)))}


def verify(offers: Mapping[str, dict[str, str]], pinned: Mapping[str, str], study: str) -> dict[str, bytes]:
    """Every offer's key, after checking its signature against the site's pinned identity key."""
    keys = {}
    for site, item in offers.items():
        if site not in pinned:
            raise MaskingError(f"site '{site}' is not in the protocol's [federation.sites]; its key cannot be trusted")
        if not _authentic(pinned[site], study, site, item["key"], item["signature"]):
            raise MaskingError(
                f"the key relayed for site '{site}' is not signed by its pinned identity key; "
                "the coordinator may have substituted it"
            )
        keys[site] = base64.b64decode(item["key"])
    return keys


def neighbours(site: str, keys: Mapping[str, bytes], study: str, kind: str) -> list[str]:
    """The participants `site` masks with in a `kind` graph over the participants `keys` (verified)."""
    others = sorted(other for other in keys if other != site)
    half = math.ceil(math.log2(len(keys))) if len(keys) > 1 else 0
    if kind == FULL_GRAPH or 2 * half >= len(others):
        return others
    offers = "|".join(f"{name}:{keys[name].hex()}" for name in sorted(keys))
    digest = hashlib.sha256(f"workbench masking graph v1|{study}|{offers}".encode()).digest()
    order = sorted(keys, key=lambda name: hashlib.sha256(digest + name.encode()).digest())
    at = order.index(site)
    return sorted({order[(at + step) % len(order)] for step in range(-half, half + 1) if step})


def mask(
    contributions: Mapping[str, Contribution], site: str, private: bytes, peers: Mapping[str, bytes], study: str,
    tag: str,
) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
    """Each analysis' arrays encoded to fixed point plus this site's masks with every peer (limbs, mod 2¹²⁸).

    One ChaCha20 stream per peer and analysis covers all its arrays (keys in sorted order), so an
    analysis a site refuses leaves the others' masks intact.
    """
    seeds = {other: _seed(private, public, study, site, other) for other, public in peers.items() if other != site}
    masked: dict[str, dict[str, np.ndarray]] = {}
    for analysis_id, contribution in contributions.items():
        names = sorted(contribution)
        encoded = [fixed_point.encode(contribution[name]) for name in names]
        limbs = np.concatenate([array.reshape(-1, 2) for array in encoded]) if encoded else np.zeros((0, 2), np.uint64)
        for other, seed in seeds.items():
            noise = _stream(seed, f"{tag}/{analysis_id}", len(limbs))
            limbs = fixed_point.add(limbs, noise if site < other else fixed_point.negate(noise))
        offsets = np.cumsum([0, *(array.size // 2 for array in encoded)])
        masked[analysis_id] = {
            name: limbs[start:end].reshape(array.shape)
            for name, array, start, end in zip(names, encoded, offsets[:-1], offsets[1:], strict=True)
        }
    return masked


def _public(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@functools.lru_cache(maxsize=65536)
def _authentic(pinned: str, study: str, site: str, key: str, signature: str) -> bool:
    """Whether `signature` is the pinned identity key's over this site's study key (remembered per process)."""
    identity = serialization.load_ssh_public_key(pinned.encode())
    assert isinstance(identity, Ed25519PublicKey)
    try:
        identity.verify(base64.b64decode(signature), _signed(study, site, base64.b64decode(key)))
    except (InvalidSignature, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=65536)
def _seed(private: bytes, public: bytes, study: str, a: str, b: str) -> bytes:
    """The pair's mask seed (remembered per process: a study's keys do not change between its rounds)."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))
    low, high = sorted((a, b))
    info = f"workbench mask v2|{study}|{low}|{high}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _stream(seed: bytes, name: str, size: int) -> np.ndarray:
    """`size` pseudo-random 128-bit values (limbs) from ChaCha20, one independent stream per round and analysis."""
    nonce = hashlib.sha256(name.encode()).digest()[:16]
    encryptor = Cipher(algorithms.ChaCha20(seed, nonce), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(16 * size)), dtype="<u8").reshape(size, 2).copy()


def _signed(study: str, site: str, public: bytes) -> bytes:
    return f"workbench secure aggregation key v2|{study}|{site}|".encode() + public


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
