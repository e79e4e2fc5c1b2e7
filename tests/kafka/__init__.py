"""Real Apache Kafka (KRaft) on 127.0.0.1 for the tests: see ``tests.kafka.cluster``."""

from tests.kafka.cluster import KAFKA_VERSION, KafkaCluster, KafkaSetupError, Node, PartitionState, fetch, missing_tools

__all__ = ["KAFKA_VERSION", "KafkaCluster", "KafkaSetupError", "Node", "PartitionState", "fetch", "missing_tools"]
