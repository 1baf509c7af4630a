"""The metrics store: log calls → queue → one writer thread → SQLite (see client.py)."""
