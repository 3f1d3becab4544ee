"""Where results land: ClickHouse (timeline and alert tables, migrations) and Kafka topics."""
