"""What operators watch: the metrics registry, the log's format and level, systemd's notifications, tracing spans."""
