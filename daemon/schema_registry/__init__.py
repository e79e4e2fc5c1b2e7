"""The Schema Registry: its REST client (``client``) and the loader that fills the schema cache (``loader``)."""

from daemon.schema_registry.client import RegistryClient
from daemon.schema_registry.loader import SchemaLoader, loader_for

__all__ = ["RegistryClient", "SchemaLoader", "loader_for"]
