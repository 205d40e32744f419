"""`workbench certs init`: the keys a deployment needs, made with the `cryptography` library.

- a certificate authority (`ca.crt`, `ca.key`) that signs the SuperLink's TLS certificate;
- the SuperLink's certificate and key (`superlink.crt`, `superlink.key`), valid for the given
  hosts (IP addresses or DNS names);
- per hospital, a SuperNode authentication key pair (`nodes/<site>` private, OpenSSH ECDSA P-384,
  and `nodes/<site>.pub`), the public half registered at the SuperLink.

Private keys are written with mode 0600 and never leave this folder; give each hospital only
its own node key and `ca.crt`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from workbench.errors import UserError

VALID_DAYS = 825


def init(folder: Path, sites: Sequence[str], hosts: Sequence[str]) -> list[Path]:
    """Create the CA, the SuperLink certificate and one node key pair per site; return the files written."""
    if not sites:
        raise UserError("name the hospitals' site ids with --sites hospital-a,hospital-b,…")
    if (folder / "ca.key").exists():
        raise UserError(f"{folder} already holds a CA; use another folder (existing keys are never overwritten)")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Workbench federation CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "superlink")])
    server_cert = (
        _builder(server_name, ca_name, server_key.public_key())
        .add_extension(x509.SubjectAlternativeName([_general_name(host) for host in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    written = [
        write_secret(folder / "ca.key", _pem(ca_key)),
        write_public(folder / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM)),
        write_secret(folder / "superlink.key", _pem(server_key)),
        write_public(folder / "superlink.crt", server_cert.public_bytes(serialization.Encoding.PEM)),
    ]
    for site in sites:
        written += node_key(folder / "nodes", site)
    return written


def node_key(folder: Path, site: str) -> list[Path]:
    """A SuperNode authentication key pair: `<site>` (private, 0600) and `<site>.pub` (to register)."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / site).exists():
        raise UserError(f"{folder / site} already exists; keys are never overwritten")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return [write_secret(folder / site, private), write_public(folder / f"{site}.pub", public + b"\n")]


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_secret(path: Path, data: bytes) -> Path:
    """Write a private key: mode 0600, never over an existing file."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)
    return path


def write_public(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
