"""Everything that talks to Kafka: the clients (built in ``clients``, the one door to aiokafka's insides), the
consumer, the results writer, the router's topics, followers of compacted topics and read-backs."""
