"""The stream engine: stage A (resolve) and stage B (judge), and what they share."""
