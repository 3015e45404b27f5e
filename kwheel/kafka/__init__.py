"""Everything that talks to Kafka: client settings, topics, the stream writer."""
