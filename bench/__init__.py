"""Load benchmark of the CDS service against a bare Flask app (see bench/README.md)."""
