"""Pairwise additive masking (Bonawitz et al.): a site's replies look random; their sum is exact.

Each round a site offers a fresh X25519 public key, signed with its Ed25519 identity key. For
the next round the coordinator relays all offers; each site checks every peer's signature
against the identity key pinned in the approved protocol, derives a 32-byte seed per peer
(X25519, then HKDF-SHA256 bound to study, round and the pair), expands it with ChaCha20 into
one mask per array, and adds the mask (or subtracts it, by site-id order) to its fixed-point
encoded values modulo 2¹²⁸. Every mask appears once with each sign, so they cancel in the sum.
All primitives come from the `cryptography` library.
"""

from __future__ import annotations

import base64
import hashlib
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

MINIMUM_SITES = 3
"""With fewer sites, the sum minus one's own contribution is the other site's."""


class MaskingError(Exception):
    """A key offer is not authentic or cannot be used; the message names the site."""


class KeyStore(Protocol):
    """Where a node keeps the private halves of the keys it offered, until used (once)."""

    def put(self, public: bytes, private: bytes) -> None: ...

    def take(self, public: bytes) -> bytes | None: ...


def offer(identity: Ed25519PrivateKey, site: str, study: str, issued: str, store: KeyStore) -> dict[str, str]:
    """A fresh key for the next round, signed by the site's identity key."""
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    store.put(public, private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                             serialization.NoEncryption()))  # fmt: skip
    signature = identity.sign(_signed(study, site, issued, public))
    return {"key": _b64(public), "signature": _b64(signature), "issued": issued}


def verify(offers: Mapping[str, dict[str, str]], pinned: Mapping[str, str], study: str) -> dict[str, bytes]:
    """Every offer's key, after checking its signature against the site's pinned identity key."""
    keys = {}
    for site, item in offers.items():
        if site not in pinned:
            raise MaskingError(f"site '{site}' is not in the protocol's [federation.sites]; its key cannot be trusted")
        identity = serialization.load_ssh_public_key(pinned[site].encode())
        assert isinstance(identity, Ed25519PublicKey)
        public = base64.b64decode(item["key"])
        try:
            identity.verify(base64.b64decode(item["signature"]), _signed(study, site, item["issued"], public))
        except (InvalidSignature, ValueError):
            raise MaskingError(
                f"the key relayed for site '{site}' is not signed by its pinned identity key; "
                "the coordinator may have substituted it"
            ) from None
        keys[site] = public
    return keys


def mask(
    contributions: Mapping[str, Contribution], site: str, private: bytes, peers: Mapping[str, bytes], study: str,
    tag: str,
) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
    """Each array encoded to fixed point plus this site's masks with every peer (limbs, mod 2¹²⁸)."""
    own = X25519PrivateKey.from_private_bytes(private)
    seeds = {
        other: _seed(own.exchange(X25519PublicKey.from_public_bytes(public)), study, tag, site, other)
        for other, public in peers.items()
        if other != site
    }
    masked: dict[str, dict[str, np.ndarray]] = {}
    for analysis_id, contribution in contributions.items():
        masked[analysis_id] = {}
        for key, value in contribution.items():
            limbs = fixed_point.encode(value)
            for other, seed in seeds.items():
                noise = _stream(seed, f"{analysis_id}/{key}", value.size).reshape(limbs.shape)
                limbs = fixed_point.add(limbs, noise if site < other else fixed_point.negate(noise))
            masked[analysis_id][key] = limbs
    return masked


def _seed(shared: bytes, study: str, tag: str, a: str, b: str) -> bytes:
    low, high = sorted((a, b))
    info = f"workbench mask v1|{study}|{tag}|{low}|{high}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _stream(seed: bytes, name: str, size: int) -> np.ndarray:
    """`size` pseudo-random 128-bit values (limbs) from ChaCha20, one independent stream per array name."""
    nonce = hashlib.sha256(name.encode()).digest()[:16]
    encryptor = Cipher(algorithms.ChaCha20(seed, nonce), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(16 * size)), dtype="<u8").reshape(size, 2).copy()


def _signed(study: str, site: str, issued: str, public: bytes) -> bytes:
    return f"workbench secure aggregation key v1|{study}|{site}|{issued}|".encode() + public


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
