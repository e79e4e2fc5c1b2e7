"""What the operator tools share: a usage error, the config a command names, the admin address it gives."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from daemon.core.config import Config
from daemon.core.errors import ConfigError
from daemon.core.validate import load_config

DEFAULT_TOKEN_ENV = "WEBHOOK_ROUTER_TOKEN"  # noqa: S105 - the name of a variable, not a token


class UsageError(Exception):
    """A command given wrongly (printed, exit 2)."""


def config_at(path: str | Path, environ: Mapping[str, str]) -> Config:
    """The config a command names with ``--config``; UsageError listing its faults."""
    try:
        return load_config(path, dict(environ))
    except ConfigError as exc:
        raise UsageError("\n".join(exc.errors)) from None


def admin_url(config: Config) -> str:
    """Where a client on this host reaches the config's admin server (a wildcard listen address: loopback)."""
    host, _, port = config.admin.listen.rpartition(":")
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"  # noqa: S104 - a client's address
