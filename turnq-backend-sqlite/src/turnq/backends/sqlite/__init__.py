"""turnq SQLite backend."""
