"""Placeholder for `turnq serve` (filled in below)."""
