"""Kafka plumbing: client configurations, topics, reading to the end, lag."""
