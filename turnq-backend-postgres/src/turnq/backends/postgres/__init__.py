"""turnq PostgreSQL backend."""
