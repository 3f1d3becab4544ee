"""The stream jobs (Faust app and agents), the `cem` command, and their operational glue."""
