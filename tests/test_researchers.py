"""Who may submit to a federation, and how the outputs travel back (no Flower needed)."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.exceptions import InvalidTag

from workbench import handback, researchers, sealed
from workbench.errors import UserError

SHA = "ab" * 32


@pytest.fixture
def keys(tmp_path):
    coordinator = tmp_path / "certs" / "researchers"
    researchers.new_key(coordinator, "alice")
    researchers.new_key(tmp_path / "elsewhere", "mallory")
    return coordinator, tmp_path / "state"


def test_a_registered_researchers_signed_request_is_accepted_once(keys):
    folder, state = keys
    _, reply = sealed.reply_key()
    request = researchers.sign(folder / "alice", SHA, reply, "run")
    assert researchers.authenticate(folder, state, request, SHA, "run") == "alice"
    with pytest.raises(UserError, match="already used"):
        researchers.authenticate(folder, state, request, SHA, "run")  # a replay


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda r: {**r, "protocol_sha256": "cd" * 32}, "signature does not verify"),
        (lambda r: {**r, "reply_key": base64.b64encode(bytes(32)).decode()}, "signature does not verify"),
        (lambda r: {**r, "purpose": "check"}, "signature does not verify"),
        (lambda r: {**r, "signature": r["signature"][:-4] + "AAA="}, "signature does not verify"),
    ],
)
def test_a_changed_request_is_refused(keys, change, problem):
    folder, state = keys
    request = researchers.sign(folder / "alice", SHA, sealed.reply_key()[1], "run")
    with pytest.raises(UserError, match=problem):
        researchers.authenticate(folder, state, change(request), SHA, "run")


def test_unknown_stale_and_misdirected_requests_are_refused(keys, tmp_path):
    folder, state = keys
    reply = sealed.reply_key()[1]
    mallory = researchers.sign(tmp_path / "elsewhere" / "mallory", SHA, reply, "run")
    with pytest.raises(UserError, match="not registered at this coordinator"):
        researchers.authenticate(folder, state, mallory, SHA, "run")
    other_protocol = researchers.sign(folder / "alice", "cd" * 32, reply, "run")
    with pytest.raises(UserError, match="another protocol or purpose"):
        researchers.authenticate(folder, state, other_protocol, SHA, "run")
    with pytest.raises(UserError, match="has no researcher keys"):
        researchers.authenticate(tmp_path / "empty", state, mallory, SHA, "run")


def test_the_outputs_open_only_with_the_reply_key_and_arrive_whole(tmp_path):
    outputs = tmp_path / "outputs"
    (outputs / "transcript").mkdir(parents=True)
    (outputs / "results.json").write_text(json.dumps({"analyses": {}}))
    (outputs / "transcript" / "index.json").write_text("[]")
    private, public = sealed.reply_key()
    blob = sealed.seal(handback.pack(outputs), public)
    shown: list[str] = []
    reader = handback.Reader(shown.append)
    for line in ["round 1: km discover\n", *handback.frames("sealed", blob), "done\n"]:
        reader.feed(line)
    assert shown == ["round 1: km discover\n", "done\n"] and not reader.problems
    written = handback.unpack(sealed.unseal(reader.payloads["sealed"], private), tmp_path / "out")
    assert sorted(p.name for p in written) == ["results.json", "transcript"]
    assert (tmp_path / "out" / "transcript" / "index.json").read_text() == "[]"
    with pytest.raises(InvalidTag):
        sealed.unseal(blob, sealed.reply_key()[0])  # sealed to someone else
    damaged = handback.Reader(shown.append)
    for line in handback.frames("sealed", blob):
        damaged.feed(line.replace("A", "B", 1) if line.startswith("@@workbench+") else line)
    assert "sealed" not in damaged.payloads and "arrived damaged" in damaged.problems[0]


def test_researcher_key_names_and_existing_keys_are_checked(tmp_path):
    with pytest.raises(UserError, match="letters, digits"):
        researchers.new_key(tmp_path, "../alice")
    researchers.new_key(tmp_path, "alice")
    with pytest.raises(UserError, match="never overwritten"):
        researchers.new_key(tmp_path, "alice")
    assert (tmp_path / "alice").stat().st_mode & 0o777 == 0o600
