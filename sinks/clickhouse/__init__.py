"""ClickHouse: connection, numbered migrations, and the batch writer the judge agent uses."""
