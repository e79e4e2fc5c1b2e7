"""The portal: one tenant's endpoints, deliveries and event types as pages (``site``), opened by a signed, expiring
link (``links``), rendered without a framework (``pages``)."""
