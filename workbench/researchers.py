"""Who may submit studies to a deployed federation: researchers whose keys the coordinator holds.

A researcher's key is an Ed25519 pair (OpenSSH format): the private half stays on the researcher's
machine, the public half goes to the coordinator's `certs/researchers/<name>.pub`. Every submission
carries a request signed with it — the protocol's SHA-256, the time, a fresh nonce and the public
key the results are to be sealed to — and the coordinator's ServerApp runs the study only if the
signature verifies against a registered key, the time is within `MAX_SKEW` seconds of its clock
and the nonce was never seen. The researcher's name (the key file's name) is what every site's
audit log records as the requester.
"""

from __future__ import annotations

import base64
import datetime
import fcntl
import json
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from workbench.certs import write_public, write_secret
from workbench.errors import UserError

MAX_SKEW = 300
"""Seconds a signed request stays valid (and the clocks of researcher and coordinator may differ)."""
SIGNED = ("protocol_sha256", "time", "nonce", "reply_key", "purpose")
"""The request's fields the signature covers."""


def new_key(folder: Path, name: str) -> list[Path]:
    """A researcher key pair: `<name>` (private, 0600, for the researcher) and `<name>.pub` (for the coordinator)."""
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"'{name}': a researcher name is letters, digits, '-', '_' or '.'")
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / name, folder / f"{name}.pub"
    if private.exists() or public.exists():
        raise UserError(f"{private} already exists; keys are never overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption())  # fmt: skip
    return [write_secret(private, pem), write_public(public, (_line(key.public_key()) + "\n").encode())]


def sign(key_path: Path, protocol_sha256: str, reply_key: bytes, purpose: str) -> dict[str, str]:
    """A request to run (`purpose` "run") or dry-run ("check") a protocol, signed with the researcher's key."""
    try:
        key = serialization.load_ssh_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as error:
        raise UserError(f"{key_path}: cannot read the researcher key ({type(error).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{key_path}: not a researcher key (ssh-ed25519); create one with workbench certs researcher")
    request = {
        "protocol_sha256": protocol_sha256,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nonce": secrets.token_hex(16),
        "reply_key": base64.b64encode(reply_key).decode(),
        "purpose": purpose,
        "key": _line(key.public_key()),
    }
    request["signature"] = base64.b64encode(key.sign(_signed_bytes(request))).decode()
    return request


def authenticate(folder: Path, state: Path, request: dict[str, Any], protocol_sha256: str, purpose: str) -> str:
    """The registered researcher who signed `request` (raises UserError saying why not)."""
    known = registered(folder)
    if not known:
        raise UserError("this coordinator has no researcher keys (certs/researchers/*.pub); its operator adds "
                        "yours with workbench certs researcher NAME")  # fmt: skip
    name = known.get(str(request.get("key", "")).strip())
    if name is None:
        raise UserError("the researcher key that signed this request is not registered at this coordinator; "
                        "send its .pub file to the coordinator's operator")  # fmt: skip
    try:
        public = serialization.load_ssh_public_key(str(request["key"]).encode())
        if not isinstance(public, Ed25519PublicKey):
            raise ValueError("not an ssh-ed25519 key")
        public.verify(base64.b64decode(str(request["signature"])), _signed_bytes(request))
    except (KeyError, ValueError, InvalidSignature):
        raise UserError("the request's signature does not verify; nothing was run") from None
    if request.get("protocol_sha256") != protocol_sha256 or request.get("purpose") != purpose:
        raise UserError("the signed request is for another protocol or purpose; nothing was run")
    try:
        sent = datetime.datetime.fromisoformat(str(request["time"]))
    except ValueError:
        raise UserError("the signed request carries no valid time; nothing was run") from None
    skew = abs((datetime.datetime.now(datetime.UTC) - sent).total_seconds())
    if skew > MAX_SKEW:
        raise UserError(f"the signed request is {skew:.0f} s from the coordinator's clock (at most {MAX_SKEW} s); "
                        "check the clock and submit again")  # fmt: skip
    _claim_nonce(state, str(request["nonce"]), sent)
    return name


def registered(folder: Path) -> dict[str, str]:
    """Public key line → researcher name, for every `<name>.pub` in `folder`."""
    keys = {}
    for path in sorted(folder.glob("*.pub")) if folder.is_dir() else []:
        line = path.read_text(encoding="utf-8").strip()
        keys[" ".join(line.split()[:2])] = path.stem
    return keys


def _signed_bytes(request: dict[str, Any]) -> bytes:
    return json.dumps({field: request.get(field) for field in (*SIGNED, "key")}, sort_keys=True).encode()


def _line(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _claim_nonce(state: Path, nonce: str, sent: datetime.datetime) -> None:
    """Refuse a nonce seen before (a replayed request); forget nonces older than the validity window."""
    state.mkdir(parents=True, exist_ok=True)
    path = state / "nonces.json"
    with open(state / "nonces.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        seen: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
        if nonce in seen:
            raise UserError("this signed request was already used (a replay?); nothing was run")
        horizon = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=2 * MAX_SKEW)
        seen = {key: time for key, time in seen.items() if datetime.datetime.fromisoformat(time) > horizon}
        seen[nonce] = sent.isoformat()
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(seen))
        os.replace(temporary, path)
