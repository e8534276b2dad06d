"""turnq.server: the HTTP/SSE server."""
