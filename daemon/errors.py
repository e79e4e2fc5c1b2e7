"""One root error; subclasses are classified by attributes, not by catching strings."""

from __future__ import annotations


class RouterError(Exception):
    """Root of every error the router raises on purpose."""

    retriable: bool = False
    http_status: int = 500  # what the admin API answers for it


class BadRequest(RouterError):
    http_status = 400


class NotFound(RouterError):
    http_status = 404


class ConfigError(RouterError):
    """A config that cannot be used. ``errors`` holds one ``path: message`` line per fault."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))
