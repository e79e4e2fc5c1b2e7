"""webhook-router: Kafka events in, signed webhook deliveries out, every outcome on a results topic."""

__version__ = "0.1.0"
