"""Portal links: what lets one browser manage one tenant's endpoints for a while, without a password or a cookie.

The platform's backend asks for a link with its admin token (``POST /v1/tenants/{tenant}/portal-links``) and hands
it to its customer's browser (an iframe in its own pages, where third-party cookies do not work). The link carries
the session itself, in the URL path (``/portal/<token>/...``): every page's links and forms keep it there, and no
cookie, no storage and no JavaScript is involved.

A token is ``v1.<claims>.<mac>``: the claims (tenant, issued and expiry times, a random session id, the return URL
and the features allowed) as base64url JSON, and an HMAC-SHA256 over ``v1.<claims>`` under a key derived by
HKDF-SHA256 from the admin token (every instance shares it; rotating the admin token ends every link at once).
A token whose MAC does not verify, that does not decode, or that claims more than a day is refused as forged; one
past its expiry as expired. Each state-changing form carries a CSRF token: an HMAC of the session id under another
key from the same derivation, so a form is honoured only with the link it was served under.

Pure: no aiohttp.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Annotated, Final

import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from msgspec import Meta

from daemon.core.config import PORTAL_FEATURES, PortalFeature
from daemon.core.errors import Forbidden, Unauthorized

VERSION: Final = "v1"
MAX_TTL_S: Final = 86_400  # the longest any link lives, whatever the config says
MAX_TOKEN_CHARS: Final = 4096
SKEW_S: Final = 60  # a link issued this far in the future (another instance's clock) is still taken
_SALT: Final = b"webhook-router portal"


class LinkForged(Forbidden):
    """A link that was not minted here (its MAC does not verify) or does not decode: 403."""


class LinkExpired(Unauthorized):
    """A link past its expiry: 401 (ask the platform for a new one). ``claims`` says whose it was."""

    def __init__(self, message: str, claims: Claims) -> None:
        self.claims = claims
        super().__init__(message)


class Claims(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a link says: its tenant, when it was issued and until when it works (unix s), its session id (``sid``,
    which CSRF tokens are bound to), where "back" goes, and what its holder may do."""

    tenant: Annotated[str, Meta(min_length=1, max_length=64)]
    iat: int
    exp: int
    sid: Annotated[str, Meta(min_length=16, max_length=64)]
    return_url: Annotated[str, Meta(max_length=2048)] | None = None
    features: list[PortalFeature] = msgspec.field(default_factory=lambda: list(PORTAL_FEATURES))

    def may(self, feature: PortalFeature) -> bool:
        return feature in self.features


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Claims).decode


class LinkKeys:
    """The keys links and CSRF tokens are signed with, derived once from the admin token."""

    __slots__ = ("_csrf", "_links")

    def __init__(self, admin_token: str) -> None:
        self._links = _derive(admin_token, b"portal links v1")
        self._csrf = _derive(admin_token, b"portal csrf v1")

    def mint(
        self, tenant: str, ttl_s: int, now: float, return_url: str | None = None,
        features: list[PortalFeature] | None = None,
    ) -> tuple[str, Claims]:  # fmt: skip
        """A new link's token and its claims (a fresh session id each time)."""
        issued = int(now)
        allowed = list(PORTAL_FEATURES) if features is None else list(dict.fromkeys(features))
        claims = Claims(tenant=tenant, iat=issued, exp=issued + min(ttl_s, MAX_TTL_S), sid=secrets.token_hex(16),
                        return_url=return_url, features=allowed)  # fmt: skip
        return self.token(claims), claims

    def token(self, claims: Claims) -> str:
        body = f"{VERSION}.{_b64(_encode(claims))}"
        return f"{body}.{_b64(self._mac(body))}"

    def read(self, token: str, now: float) -> Claims:
        """The claims of a token minted here and not expired; LinkForged or LinkExpired (never saying which part of
        a forged one is wrong)."""
        forged = LinkForged("this link is not valid: ask for a new one where you opened it")
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise forged
        version, claims_b64, mac_b64 = token.split(".")
        body = f"{version}.{claims_b64}"
        try:
            given = _unb64(mac_b64)
        except ValueError:
            raise forged from None
        if version != VERSION or not hmac.compare_digest(given, self._mac(body)):
            raise forged
        try:
            claims = _decode(_unb64(claims_b64))
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
            raise forged from None
        if claims.exp - claims.iat > MAX_TTL_S or claims.iat > now + SKEW_S:
            raise forged
        if now >= claims.exp:
            raise LinkExpired("this link has expired: ask for a new one where you opened it", claims)
        return claims

    def csrf(self, claims: Claims) -> str:
        """The CSRF token of a session: every state-changing form carries it."""
        return hmac.new(self._csrf, claims.sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, claims: Claims, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf(claims).encode())

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._links, body.encode(), hashlib.sha256).digest()


def _derive(token: str, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(token.encode())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or len(text) > MAX_TOKEN_CHARS:
        raise ValueError("empty or too long")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
