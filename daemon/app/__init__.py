"""The daemon's lifecycle (``lifecycle.App``): start-up, the main loop, reloads, signals, staged shutdown."""

from daemon.app.lifecycle import App, Components

__all__ = ["App", "Components"]
