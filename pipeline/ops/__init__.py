"""What operators run: the `cem` command, the demo, erasure, dead letters, alert delivery."""
