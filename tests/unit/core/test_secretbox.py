"""daemon.core.secretbox: AES-GCM sealing of secrets at rest."""

from __future__ import annotations

import base64
import os

import pytest

from daemon.core.secretbox import SecretBox, SecretError, key_from

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
