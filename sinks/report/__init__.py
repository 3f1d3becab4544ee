"""`cem report`: a static HTML friction dashboard built from ClickHouse (no server needed to view it)."""
