"""One root error for everything the router raises on purpose; subclasses say what the admin API answers."""

from __future__ import annotations


class RouterError(Exception):
    """Root of every error the router raises on purpose."""

    http_status: int = 500  # what the admin API answers for it


class BadRequest(RouterError):
    http_status = 400


class Unauthorized(RouterError):
    """No valid bearer token (answered with ``WWW-Authenticate: Bearer``)."""

    http_status = 401


class Forbidden(RouterError):
    http_status = 403


class NotFound(RouterError):
    http_status = 404


class Conflict(RouterError):
    """A write that conflicts with the current state (a stale version, an id that exists, who paused)."""

    http_status = 409


class Unprocessable(RouterError):
    http_status = 422


class Unavailable(RouterError):
    """Not now: start-up not complete, a write not acknowledged; answered with ``Retry-After``."""

    http_status = 503


class SchemaUnavailable(Unavailable):
    """A record's writer schema the Schema Registry could not give (unreachable, a 5xx, a timeout): the record waits,
    its partition held until ``retry_at_ms`` (unix ms), and is read again; never an ``invalid_event``."""

    def __init__(self, reason: str, retry_at_ms: int) -> None:
        self.retry_at_ms = retry_at_ms
        super().__init__(reason)


class TooManyRequests(RouterError):
    """Over a bound on work under way (the scans of Kafka a tenant or an instance may run at once): refused, never
    queued; answered with ``Retry-After``."""

    http_status = 429


class TooLarge(RouterError):
    """A request body over the admin server's limit (aiohttp's ``client_max_size``)."""

    http_status = 413


class ConfigError(RouterError):
    """A config that cannot be used. ``errors`` holds one ``path: message`` line per fault."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


class InvalidEvent(RouterError):
    """Why a record cannot be routed; it becomes an ``invalid_event`` results record, never escapes the consumer."""

    http_status = 400  # a redelivery or replay of such a record is refused as a bad request


class RenderError(RouterError):
    """An event a profile's body cannot be built from (for one endpoint): that delivery is final, never retried."""


class TemplateError(RouterError):
    """A profile's body mapping that does not compile: a programming error in a profile declaration."""


class TopicError(RouterError):
    """Topics the router writes whose settings would lose data (a health topic not compacted...): a start-up error.
    ``errors`` holds one line per problem, each naming the topic and the setting."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


class KafkaUnavailable(RouterError):
    """The Kafka cluster did not answer in time (a broker unreachable, credentials refused...)."""

    http_status = 503


class KafkaRefused(KafkaUnavailable):
    """The Kafka cluster refuses this router's certificate or SASL credentials; the message names the setting to look
    at. A start-up tries again (the cluster's side may be fixed: a user added, a token refreshed); a command exits 2."""


def reason_of(exc: BaseException) -> str:
    """``Name: text`` of an error (aiokafka's own texts start with their name already), for a log line or an answer."""
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}" if text else name
