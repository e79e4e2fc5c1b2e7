"""daemon.core.secretbox: AES-GCM sealing of secrets at rest."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import pytest

from daemon.core.config import ApiConfig
from daemon.core.secretbox import Keyring, SecretBox, SecretError, key_from, keyring_from

KEY = os.urandom(32)


def test_a_sealed_secret_opens_only_under_its_key_and_where_it_belongs() -> None:
    box = SecretBox(KEY)
    sealed = box.seal("whsec_topsecret", "endpoint:a")
    assert "topsecret" not in sealed and sealed.startswith("v1:")
    assert box.open(sealed, "endpoint:a") == "whsec_topsecret"
    assert box.seal("whsec_topsecret", "endpoint:a") != sealed  # a fresh nonce each time
    with pytest.raises(SecretError):
        box.open(sealed, "endpoint:b")  # copied onto another record
    with pytest.raises(SecretError):
        SecretBox(os.urandom(32)).open(sealed, "endpoint:a")
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(SecretError):
        box.open(tampered, "endpoint:a")
    with pytest.raises(SecretError):
        box.open("plain", "endpoint:a")


def test_the_key_comes_from_the_environment_or_a_file(tmp_path: os.PathLike[str]) -> None:
    text = base64.b64encode(KEY).decode()
    assert key_from({"K": text}, "K", None) == KEY
    path = os.path.join(tmp_path, "key")
    with open(path, "w") as f:
        f.write(text + "\n")
    assert key_from({}, None, path) == KEY
    for environ, message in (
        ({}, "environment variable K is not set"),
        ({"K": "not base64!"}, "must be base64"),
        ({"K": base64.b64encode(b"short").decode()}, "must be 32 bytes, not 5"),
    ):
        with pytest.raises(SecretError, match=message):
            key_from(environ, "K", None)
    with pytest.raises(SecretError, match="cannot read"):
        key_from({}, None, os.path.join(tmp_path, "missing"))


# --- the keyring: the current key seals and signs, previous keys still open and verify ---


def test_a_keyring_seals_under_a_key_derived_for_sealing_never_the_key_itself() -> None:
    keys = Keyring(KEY)
    sealed = keys.seal("whsec_topsecret", "endpoint/a#secrets")
    assert sealed.startswith("v2:") and "topsecret" not in sealed
    assert keys.open(sealed, "endpoint/a#secrets", keys.current_id) == "whsec_topsecret"
    for bound in ("endpoint/a#url", "endpoint/b#secrets"):  # another field, another endpoint
        with pytest.raises(SecretError):
            keys.open(sealed, bound, keys.current_id)
    with pytest.raises(SecretError):
        SecretBox(KEY).open("v1:" + sealed[3:], "endpoint/a#secrets")  # the key itself does not open it
    with pytest.raises(SecretError):
        keys.open_legacy(sealed, "endpoint/a#secrets")  # nor does the legacy format


def test_a_key_id_names_a_key_without_revealing_it_and_a_mac_verifies_under_its_key_only() -> None:
    keys, other = Keyring(KEY), Keyring(os.urandom(32))
    assert keys.current_id == Keyring(KEY).current_id != other.current_id
    assert len(keys.current_id) == 16 and keys.current_id not in (KEY.hex(), base64.b64encode(KEY).decode())
    mac = keys.sign(b"record")
    assert keys.verify(b"record", keys.current_id, mac)
    assert not keys.verify(b"record!", keys.current_id, mac)
    assert not keys.verify(b"record", keys.current_id, other.sign(b"record"))
    with pytest.raises(SecretError, match=f"written under key id {other.current_id!r}, which this instance does not"):
        keys.verify(b"record", other.current_id, mac)
    sealing_key_mac = base64.b64encode(hmac.digest(KEY, b"record", hashlib.sha256)).decode()
    assert not keys.verify(b"record", keys.current_id, sealing_key_mac)  # the MAC key is derived, not the key


def test_previous_keys_still_open_and_verify_while_the_current_one_writes() -> None:
    old, new = os.urandom(32), os.urandom(32)
    before = Keyring(old)
    sealed, mac = before.seal("s", "b"), before.sign(b"r")
    legacy = SecretBox(old).seal("l", "endpoint/a")
    rotated = Keyring(new, [old, new])  # the current key among the previous is ignored
    assert rotated.ids == [Keyring(new).current_id, before.current_id]
    assert rotated.open(sealed, "b", before.current_id) == "s" and rotated.verify(b"r", before.current_id, mac)
    assert rotated.open_legacy(legacy, "endpoint/a") == "l"
    assert rotated.open(rotated.seal("t", "b"), "b", rotated.current_id) == "t"
    with pytest.raises(SecretError):
        Keyring(new).open(sealed, "b", before.current_id)
    with pytest.raises(SecretError, match="opens under none of the keys"):
        Keyring(new).open_legacy(legacy, "endpoint/a")


def test_the_keyring_of_the_api_config_reads_the_current_and_previous_keys(tmp_path: os.PathLike[str]) -> None:
    old, older = os.urandom(32), os.urandom(32)
    path = os.path.join(tmp_path, "older")
    with open(path, "w") as f:
        f.write(base64.b64encode(older).decode())
    environ = {"K": base64.b64encode(KEY).decode(), "OLD": base64.b64encode(old).decode()}
    api = ApiConfig(secrets_key_env="K", previous_secrets_key_envs=["OLD"], previous_secrets_key_files=[path])
    keys = keyring_from(environ, api)
    assert keys.ids == [Keyring(KEY).current_id, Keyring(old).current_id, Keyring(older).current_id]
    with pytest.raises(SecretError, match="environment variable GONE is not set"):
        keyring_from(environ, ApiConfig(secrets_key_env="K", previous_secrets_key_envs=["GONE"]))
