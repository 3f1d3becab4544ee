"""Where alerts reach people: routing (config/alerts.yaml), destinations, and the delivery service."""
