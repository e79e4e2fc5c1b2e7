"""Secrets at rest: AES-256-GCM under a key from the environment or a file. Pure (cryptography only).

Each sealed value carries its own random 96-bit nonce and is bound to where it belongs (the associated
data, e.g. the endpoint id), so a sealed secret copied onto another record does not open there. A reader
of the endpoints topic without the key learns nothing of the secrets it holds.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from daemon.core.errors import RouterError

_PREFIX = "v1:"
_NONCE_BYTES = 12


class SecretError(RouterError):
    """A key that cannot be used, or a sealed value that does not open under it."""


def key_from(environ: Mapping[str, str], env: str | None, file: str | Path | None) -> bytes:
    """The 32-byte key: base64 in the environment variable ``env``, else in the file ``file``."""
    if env:
        if env not in environ:
            raise SecretError(f"environment variable {env} is not set")
        text = environ[env]
    elif file:
        try:
            text = Path(file).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretError(f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}") from None
    else:
        raise SecretError("no key: give a key environment variable or a key file")
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SecretError("the key must be base64 (32 random bytes: `openssl rand -base64 32`)") from None
    if len(key) != 32:
        raise SecretError(f"the key must be 32 bytes, not {len(key)}")
    return key


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, bound_to: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), bound_to.encode())
        return _PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: str, bound_to: str) -> str:
        if not sealed.startswith(_PREFIX):
            raise SecretError("not a sealed value")
        try:
            raw = base64.b64decode(sealed[len(_PREFIX) :], validate=True)
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], bound_to.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag):
            raise SecretError("a sealed value does not open under this key (wrong key, or tampered)") from None
