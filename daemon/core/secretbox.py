"""Secrets at rest, and the authenticity of what the endpoints topic holds: AES-256-GCM and HMAC-SHA256 under keys
derived from the secrets key (from the environment or a file). Pure (cryptography only).

A ``Keyring`` holds the current key, which seals and signs everything written, and older keys, which still open and
verify what was written under them (a key is rotated by making a new one current and keeping the old one among the
previous until nothing on the topic is under it any more). Each key is known by an id derived from it, so a record
names the key it was written under without naming the key.

From each key, HKDF-SHA256 derives two keys with distinct purposes: one that seals (AES-256-GCM, ``v2:`` values)
and one that signs (HMAC-SHA256 over a whole record). A sealed value carries its own random 96-bit nonce and is
bound to where it belongs (the associated data: the endpoint and the field), so a sealed secret copied onto another
record, or into another field of its own, does not open there. ``v1:`` values, sealed under the key itself and bound
to the endpoint only, were written before records were signed: ``open_legacy`` still opens them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from daemon.core.config import ApiConfig
from daemon.core.errors import RouterError

LEGACY_PREFIX = "v1:"  # sealed under the key itself, bound to the endpoint only (records without a MAC)
PREFIX = "v2:"  # sealed under the key's sealing key, bound to the endpoint and the field
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
    """AES-256-GCM under one key: ``seal`` and ``open`` values bound to ``bound_to`` (the associated data)."""

    def __init__(self, key: bytes, prefix: str = LEGACY_PREFIX) -> None:
        self._aead = AESGCM(key)
        self._prefix = prefix

    def seal(self, plaintext: str, bound_to: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), bound_to.encode())
        return self._prefix + base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: str, bound_to: str) -> str:
        if not sealed.startswith(self._prefix):
            raise SecretError("not a sealed value")
        try:
            raw = base64.b64decode(sealed[len(self._prefix) :], validate=True)
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], bound_to.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag):
            raise SecretError("a sealed value does not open under this key (wrong key, or tampered)") from None


def _derived(key: bytes, purpose: str, length: int = 32) -> bytes:
    info = f"webhook-router endpoints topic: {purpose}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


class _Key:
    """One secrets key and what derives from it."""

    def __init__(self, key: bytes) -> None:
        self.id = _derived(key, "key id", 8).hex()
        self.box = SecretBox(_derived(key, "seal"), PREFIX)
        self.legacy = SecretBox(key, LEGACY_PREFIX)
        self.mac_key = _derived(key, "record mac")


class Keyring:
    """The current key (it seals and signs what is written) and previous keys (they still open and verify what was
    written under them). Keys are 32 bytes (``key_from``); a previous key equal to the current one is ignored."""

    def __init__(self, current: bytes, previous: Iterable[bytes] = ()) -> None:
        self._current = _Key(current)
        self._keys = {self._current.id: self._current}
        for key in previous:
            derived = _Key(key)
            self._keys.setdefault(derived.id, derived)

    @property
    def current_id(self) -> str:
        return self._current.id

    @property
    def ids(self) -> list[str]:
        """Every key id this keyring reads, the current first."""
        return list(self._keys)

    def _key(self, key_id: str | None) -> _Key:
        key = self._keys.get(key_id) if isinstance(key_id, str) else None
        if key is None:
            raise SecretError(
                f"written under key id {key_id!r}, which this instance does not have (its keys: "
                f"{', '.join(self._keys)}): add that key to api.previous_secrets_key_files or _envs"
            )
        return key

    def seal(self, plaintext: str, bound_to: str) -> str:
        """``plaintext`` sealed under the current key, bound to ``bound_to`` (``v2:``)."""
        return self._current.box.seal(plaintext, bound_to)

    def open(self, sealed: str, bound_to: str, key_id: str) -> str:
        """A ``v2:`` value sealed under the key ``key_id`` and bound to ``bound_to``. SecretError otherwise."""
        return self._key(key_id).box.open(sealed, bound_to)

    def open_legacy(self, sealed: str, bound_to: str) -> str:
        """A ``v1:`` value (a record without a MAC) sealed under any of the keys and bound to ``bound_to``."""
        for key in self._keys.values():
            try:
                return key.legacy.open(sealed, bound_to)
            except SecretError:
                continue
        raise SecretError("a sealed value of a record without a MAC opens under none of the keys")

    def sign(self, data: bytes) -> str:
        """The MAC of ``data`` under the current key (HMAC-SHA256, base64)."""
        return base64.b64encode(hmac.digest(self._current.mac_key, data, hashlib.sha256)).decode()

    def verify(self, data: bytes, key_id: str | None, mac: str) -> bool:
        """Whether ``mac`` is the MAC of ``data`` under the key ``key_id``; SecretError when that key is not here."""
        expected = base64.b64encode(hmac.digest(self._key(key_id).mac_key, data, hashlib.sha256)).decode()
        return hmac.compare_digest(expected.encode(), mac.encode())


def keyring_from(environ: Mapping[str, str], api: ApiConfig) -> Keyring:
    """The keyring ``[api]`` describes: the current key and the previous ones. SecretError for a key that cannot be
    used."""
    current = key_from(environ, api.secrets_key_env, api.secrets_key_file)
    previous = [key_from(environ, env, None) for env in api.previous_secrets_key_envs]
    previous += [key_from(environ, None, file) for file in api.previous_secrets_key_files]
    return Keyring(current, previous)
