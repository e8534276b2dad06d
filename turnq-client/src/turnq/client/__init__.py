"""turnq.client: clients and local mode."""
