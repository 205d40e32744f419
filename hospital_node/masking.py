"""Pairwise additive masking (Bonawitz et al.; a sparse graph as in SecAgg+): a site's replies look random, their
sum is exact.

Each site has one X25519 key per study, signed with its Ed25519 identity key and offered in its
replies. For a masked round the coordinator relays the participants' offers; each site checks every
signature against the identity keys pinned in the approved protocol and masks with its neighbours
in the round's masking graph:

- `full`: every other participant;
- `sparse` (the default): a Harary graph — the participants in a random order, each joined to the
  ⌈log₂ N⌉ nearest on either side (degree 2⌈log₂ N⌉; the full graph when that reaches N − 1). The
  order is drawn from a hash of all the verified, signed offers, so the coordinator cannot set it (it
  could only re-draw it by declaring sites dropped, which every site's audit log records).

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
    signer = identity.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if (signer, site, study, public) not in _OFFERS:  # Ed25519 is deterministic: the same offer every round
        _OFFERS[(signer, site, study, public)] = {
            "key": _b64(public),
            "signature": _b64(identity.sign(_signed(study, site, public))),
        }
    return private, dict(_OFFERS[(signer, site, study, public)])


_OFFERS: dict[tuple[bytes, str, str, bytes], dict[str, str]] = {}
"""Signed offers made by this process."""


def claim(store: KeyStore, study: str, tag: str) -> None:
    """Record that the study's key masks round attempt `tag`; ValueError if it masked that tag before.

    The masks depend only on the key, the pair of sites and the tag: two different replies masked with
    the same tag would show their difference to whoever received both.
    """
    name = f"{study}/tags"
    used = (store.get(name) or b"").decode().split("\n")
    if tag in used:
        raise ValueError(f"round {tag} of this study was masked before; refusing to reuse its masks")
    store.put(name, "\n".join([*filter(None, used), tag]).encode())


def verify(offers: Mapping[str, dict[str, str]], pinned: Mapping[str, str], study: str) -> dict[str, bytes]:
    """Every offer's key, after checking its signature against the site's pinned identity key."""
    return dict(_verified(tuple((site, item["key"], item["signature"]) for site, item in offers.items()),
                          tuple(pinned.items()), study))  # fmt: skip


@functools.lru_cache(maxsize=256)
def _verified(
    offers: tuple[tuple[str, str, str], ...], pinned_items: tuple[tuple[str, str], ...], study: str
) -> tuple[tuple[str, bytes], ...]:
    """`verify`, remembered per process: a study's offers are the same in all its rounds."""
    pinned = dict(pinned_items)
    keys = []
    for site, key, signature in offers:
        if site not in pinned:
            raise MaskingError(f"site '{site}' is not in the protocol's [federation.sites]; its key cannot be trusted")
        if not _authentic(pinned[site], study, site, key, signature):
            raise MaskingError(
                f"the key relayed for site '{site}' is not signed by its pinned identity key; "
                "the coordinator may have substituted it"
            )
        keys.append((site, base64.b64decode(key)))
    return tuple(keys)


def degree(sites: int, kind: str) -> int:
    """How many of the other participants each site masks with in a `kind` graph over `sites` participants."""
    others = max(sites - 1, 0)
    return others if kind == FULL_GRAPH else min(others, 2 * math.ceil(math.log2(max(sites, 1))))


def neighbours(site: str, keys: Mapping[str, bytes], study: str, kind: str) -> list[str]:
    """The participants `site` masks with in a `kind` graph over the participants `keys` (verified)."""
    others = sorted(other for other in keys if other != site)
    half = degree(len(keys), kind) // 2
    if degree(len(keys), kind) == len(others):
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
    """Each analysis' arrays plus this site's masks with every peer: integer arrays (counts) as uint64 modulo 2⁶⁴,
    real arrays as fixed-point limbs modulo 2¹²⁸.

    Per peer and analysis one ChaCha20 stream covers all its integer arrays and one all its real ones
    (keys in sorted order), so an analysis a site refuses leaves the others' masks intact.
    """
    seeds = {other: _seed(private, public, study, site, other) for other, public in peers.items() if other != site}
    signs = (
        [seed for other, seed in seeds.items() if site < other],
        [seed for other, seed in seeds.items() if site > other],
    )
    masked: dict[str, dict[str, np.ndarray]] = {}
    for analysis_id, contribution in contributions.items():
        counts = sorted(name for name, value in contribution.items() if fixed_point.is_count(value))
        reals = sorted(name for name in contribution if name not in counts)
        whole = [fixed_point.check_integers(contribution[name]).astype(np.uint64) for name in counts]
        limbs = [fixed_point.encode(contribution[name]) for name in reals]
        masked[analysis_id] = {
            **_split(counts, whole, _masked_words(np.concatenate([w.ravel() for w in whole]) if whole else
                                                   np.zeros(0, np.uint64), signs, f"{tag}/{analysis_id}/counts")),
            **_split(reals, limbs, _masked_limbs(np.concatenate([a.reshape(-1, 2) for a in limbs]) if limbs else
                                                 np.zeros((0, 2), np.uint64), signs, f"{tag}/{analysis_id}")),
        }  # fmt: skip
    return masked


def _masked_words(words: np.ndarray, signs: tuple[list[bytes], list[bytes]], name: str) -> np.ndarray:
    """Integers (as uint64) plus the added peers' masks minus the subtracted ones', modulo 2⁶⁴ (uint64 wraps)."""
    added, subtracted = (_streams(seeds, name, words.size, 1).sum(axis=0, dtype=np.uint64) for seeds in signs)
    return words + added - subtracted


def _masked_limbs(limbs: np.ndarray, signs: tuple[list[bytes], list[bytes]], name: str) -> np.ndarray:
    """Fixed-point limbs plus the added peers' masks minus the subtracted ones', modulo 2¹²⁸."""
    added, subtracted = (fixed_point.total(_streams(seeds, name, len(limbs), 2)) for seeds in signs)
    return fixed_point.total(np.stack([limbs, added, fixed_point.negate(subtracted)]))


def _streams(seeds: list[bytes], name: str, size: int, words: int) -> np.ndarray:
    """One ChaCha20 stream per seed for this round and analysis: shape (seeds, size, words) of uint64."""
    streams = np.zeros((max(len(seeds), 1), size, words), dtype="<u8")  # an empty sum is one row of zeros
    if size:
        nonce = hashlib.sha256(name.encode()).digest()[:16]
        zeros = bytes(8 * words * size)
        for row, seed in zip(streams, seeds, strict=False):
            Cipher(algorithms.ChaCha20(seed, nonce), mode=None).encryptor().update_into(
                zeros, memoryview(row).cast("B")
            )
    return streams if words == 2 else streams[..., 0]


def _split(names: list[str], arrays: list[np.ndarray], flat: np.ndarray) -> dict[str, np.ndarray]:
    """The masked values of `flat` back in the arrays' shapes (limbs keep their last axis)."""
    out, start = {}, 0
    for name, array in zip(names, arrays, strict=True):
        count = array.size // (2 if flat.ndim == 2 else 1)
        out[name] = flat[start : start + count].reshape(array.shape)
        start += count
    return out


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


def _signed(study: str, site: str, public: bytes) -> bytes:
    return f"workbench secure aggregation key v2|{study}|{site}|".encode() + public


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
