"""Results sealed to the researcher who asked: X25519 + HKDF-SHA256 + ChaCha20-Poly1305 (`cryptography`).

The researcher's command makes a fresh X25519 key pair per submission and signs its public half into
the request; the coordinator seals the results folder to it. Anyone else who can read the run's log
on the SuperLink sees only ciphertext.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

INFO = b"multicenter-workbench results v1"
RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def reply_key() -> tuple[X25519PrivateKey, bytes]:
    """A fresh key pair for one submission: (private, raw public bytes)."""
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes(*RAW)


def seal(data: bytes, recipient: bytes) -> bytes:
    """`data` readable only with the private half of `recipient` (raw X25519 public key)."""
    ephemeral = X25519PrivateKey.generate()
    public = ephemeral.public_key().public_bytes(*RAW)
    key = _key(ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient)), public, recipient)
    return public + ChaCha20Poly1305(key).encrypt(bytes(12), data, public)


def unseal(blob: bytes, private: X25519PrivateKey) -> bytes:
    """The sealed data (raises cryptography's InvalidTag if it was altered or sealed to another key)."""
    public, ciphertext = blob[:32], blob[32:]
    own = private.public_key().public_bytes(*RAW)
    key = _key(private.exchange(X25519PublicKey.from_public_bytes(public)), public, own)
    return ChaCha20Poly1305(key).decrypt(bytes(12), ciphertext, public)


def _key(shared: bytes, sender: bytes, recipient: bytes) -> bytes:
    """One key per (ephemeral, recipient) pair: the zero nonce is used once."""
    return HKDF(hashes.SHA256(), 32, salt=sender + recipient, info=INFO).derive(shared)
