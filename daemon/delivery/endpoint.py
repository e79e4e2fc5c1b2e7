"""``Endpoint``: everything about an endpoint that does not change per delivery (its profile, signer, serialised
request head, limits, the mask of its secrets, its retry policy and status rules), computed once per config."""

from __future__ import annotations

import asyncio
import re
from typing import Any, Final, Literal

import orjson
from aiohttp.helpers import strip_auth_from_url
from yarl import URL

from daemon.core.config import DeliveryConfig, EndpointConfig, EndpointRetryConfig, resolve_secrets
from daemon.core.errors import RenderError
from daemon.core.event import Event
from daemon.core.mask import INLINE_COMPILE, Mask
from daemon.core.policy import Policy, StatusRules
from daemon.core.profiles import PROFILES, Profile, Signer
from daemon.delivery.http import Route
from daemon.delivery.job import Job

# Where an endpoint comes from: the config file (the platform's own) or the endpoints API (a tenant's). It decides
# which network guard its requests meet (``daemon.delivery.sender``).
CONFIG: Final = "config"
API: Final = "api"
Managed = Literal["config", "api"]


def secret_values(config: EndpointConfig, secrets: list[str], url: URL) -> list[str]:
    """Everything about an endpoint that must never reach the results topic: its secrets, its URL's credentials
    (and the Basic header made of them), its custom headers' values (and the credentials after a scheme)."""
    values = list(secrets)
    auth = strip_auth_from_url(url)[1]
    if auth is not None:
        basic = auth.encode()  # the header daemon.delivery.http sends
        values += [v for v in (url.user, url.password, url.raw_user, url.raw_password) if v]
        values += [basic, basic.partition(" ")[2]]
    for value in config.headers.values():
        values.append(value)
        scheme, _, credentials = value.partition(" ")
        if credentials.strip() and scheme.isalpha():
            values.append(credentials.strip())
    return values


def policy_of(retry: EndpointRetryConfig | None, profile: Profile) -> Policy:
    """An endpoint's retry policy: its own, else its profile's."""
    if retry is None:
        return profile.retry
    if retry.policy == "exponential":
        attempts = 1 + (retry.retries or 3)
        return Policy("exponential", attempts=attempts, base_s=retry.base_s, max_s=retry.max_s, jitter=retry.jitter)
    return Policy(retry.policy, delays_s=tuple(retry.delays_s or ()), live_only=profile.retry.live_only)


def statuses_of(retry: EndpointRetryConfig | None, profile: Profile) -> StatusRules:
    """An endpoint's status rules: its profile's, with the endpoint's overrides."""
    if retry is None:
        return profile.statuses
    pause = frozenset(retry.pause_statuses) if retry.pause_statuses is not None else None
    return profile.statuses.overridden(frozenset(retry.retry_statuses), frozenset(retry.final_statuses), pause)


# An http(s) URL whose host is ASCII letters, digits, dots and hyphens, whose port has at most four digits and whose
# path and query are printable ASCII: one yarl always parses (tests/unit/delivery/test_endpoint.py holds the two
# together). Any other is parsed by yarl to check it. yarl's parse (its host and path encoded) was a tenth of the
# first read of a million endpoints, which checks every one.
_PLAIN_URL: Final = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,4})?(?:[/?#][!-~]*)?")


class Endpoint:
    """Everything about an endpoint that does not change per delivery, computed once per config.

    ``__slots__``: read on every attempt (the hot path).
    """

    __slots__ = (
        "_compiling",
        "_secrets",
        "_user_agent",
        "_wire_id",
        "base_headers",
        "body_key",
        "config",
        "id",
        "managed",
        "mask",
        "max_concurrency",
        "ordered",
        "pause_threshold",
        "policy",
        "profile",
        "queue_size",
        "route",
        "secret",
        "signer",
        "statuses",
        "timeout_s",
        "url",
    )  # fmt: skip

    def __init__(
        self, config: EndpointConfig, delivery: DeliveryConfig, environ: Any, managed: Managed = CONFIG
    ) -> None:
        """``managed``: ``"api"`` for an endpoint of the endpoints API, ``"config"`` for one of the config file."""
        self.config = config
        self.id = config.id
        self.managed = managed
        self._user_agent = delivery.user_agent
        profile = self.profile = PROFILES[config.profile]
        self.url = URL(config.url, encoded=False)
        secrets = resolve_secrets(config, environ)
        self._secrets = tuple(secrets)
        self.secret = secrets[0] if secrets else ""
        self.mask = Mask(secret_values(config, secrets, self.url))  # what never leaves in a results record
        self._compiling: asyncio.Future[None] | None = None
        self.signer: Signer = profile.signing.signer(secrets)
        self._wire_id = profile.signing.wire_id
        # Bodies that do not carry the secret are shared by every endpoint of the profile.
        self.body_key = (profile.name, self.secret if profile.injects_secret else None)
        self.timeout_s = config.timeout_s if config.timeout_s is not None else profile.timeout_s
        self.route: Route | None = None  # the serialised request head, built by the Sender on first use
        self.max_concurrency = config.max_concurrency
        self.ordered = (
            config.ordering == "key"
        )  # its live deliveries one at a time per Kafka key (daemon.core.ordering)
        self.queue_size = config.queue_size
        self.policy = policy_of(config.retry, profile)
        self.pause_threshold = (
            config.pause_after_failures if config.pause_after_failures is not None else profile.pause_after_failures
        )
        self.statuses = statuses_of(config.retry, profile)
        if profile.standard_headers:
            # Validation refuses the router's own headers; never let one through all the same.
            custom = {k: v for k, v in config.headers.items() if not profile.reserves(k)}
            self.base_headers: dict[str, str] = {
                "Content-Type": "application/json",
                "User-Agent": delivery.user_agent,
                **custom,
            }
        else:
            self.base_headers = {}  # raw: Host, Content-Length and the signature headers only

    async def mask_ready(self) -> None:
        """Compile the mask of its secrets, once: in a thread when it is large (the most custom headers validation
        allows take tens of milliseconds), so that no endpoint's settings hold the event loop up."""
        mask = self.mask
        if mask.compiled:
            return
        if mask.size <= INLINE_COMPILE:
            mask.compile()
            return
        if self._compiling is None:
            self._compiling = asyncio.ensure_future(asyncio.to_thread(mask.compile))
        await asyncio.shield(self._compiling)  # one attempt given up on leaves it to the others

    def delivers_as(self, config: EndpointConfig, delivery: DeliveryConfig, environ: Any) -> bool:
        """True when an endpoint built from these would deliver exactly like this one (its lane is kept)."""
        return (
            self.config == config
            and self._user_agent == delivery.user_agent
            and self._secrets == tuple(resolve_secrets(config, environ))
        )

    @staticmethod
    def check(config: EndpointConfig, environ: Any) -> None:
        """Raise ValueError for what would stop one being built from ``config`` (checked without building it)."""
        if config.profile not in PROFILES:
            raise ValueError(f"unknown profile {config.profile!r}")
        try:
            if _PLAIN_URL.fullmatch(config.url) is None:
                URL(config.url, encoded=False)
            resolve_secrets(config, environ)
        except KeyError as exc:
            raise ValueError(f"environment variable {exc.args[0]!r} is not set") from None

    def render(self, event: Event) -> bytes:
        """The body for this endpoint: as it arrived, or the profile's mapping of it (built once per event)."""
        template = self.profile.template
        if template is None:
            return event.value
        body = event.bodies.get(self.body_key)
        if body is None:
            try:
                rendered = template.render(
                    event.decoded(), event.event_type, event.time_ms, self.secret, event.type_field
                )
                body = orjson.dumps(rendered)
            except (TypeError, ValueError, RecursionError) as exc:  # e.g. nested deeper than JSON encoding goes
                raise RenderError(f"the {self.profile.name} body could not be built: {exc}") from None
            event.bodies[self.body_key] = body
        return body

    def request_headers(self, job: Job, body: bytes, ts: int) -> tuple[str | None, dict[str, str]]:
        """The id the contract gives this attempt on the wire (if any), and the headers that change per request:
        the profile's signature, ids and timestamp, and the event's ``traceparent``."""
        delivery = job.delivery_id
        wire_id = self._wire_id(self.id, delivery, job.attempt, ts)
        headers = self.signer.headers(delivery, wire_id, job.event.event_type, body, ts)
        traceparent = job.event.traceparent
        if traceparent is not None:
            headers["traceparent"] = traceparent
        return wire_id, headers
