"""Validation of everything a client names or sets, shared by the server and the clients.

Every rejection is a ``MALFORMED_REQUEST`` that names the field and says why, raised before any state changes.
"""

from __future__ import annotations

from typing import Any

from .errors import ErrorCode, TurnqError
from .model import DEFAULT_GRACE_MS, DEFAULT_LEASE_MS, ChannelSpec

MAX_NAME_LENGTH = 200
MAX_ID_LENGTH = 200
MAX_ERROR_LENGTH = 4_000
MAX_LEASE_MS = 7 * 24 * 3600 * 1000
MAX_WAIT_MS = 30 * 24 * 3600 * 1000
MAX_GRACE_MS = 3600 * 1000
MAX_DEPTH = 1_000_000
# A ticket that has not subscribed yet is kept at least this long, so a client has time to open its stream
# (and, after a restart, to find the server again) even on a channel with graceMs 0.
SUBSCRIBE_WINDOW_MS = 5_000


def malformed(message: str) -> TurnqError:
    return TurnqError(ErrorCode.MALFORMED_REQUEST, message)


def check_text(field: str, value: Any, max_length: int, *, required: bool = True) -> str | None:
    """A printable string of 1..max_length characters (None allowed when not required)."""
    if value is None:
        if required:
            raise malformed(f"{field} is required")
        return None
    if not isinstance(value, str):
        raise malformed(f"{field} must be a string")
    if not value:
        raise malformed(f"{field} must not be empty")
    if len(value) > max_length:
        raise malformed(f"{field} must be at most {max_length} characters")
    if not value.isprintable():
        raise malformed(f"{field} must not contain control characters")
    return value


def check_channel_name(value: Any, field: str = "name") -> str:
    name = check_text(field, value, MAX_NAME_LENGTH)
    assert name is not None
    return name


def check_int(field: str, value: Any, low: int, high: int, *, required: bool = False) -> int | None:
    """An integer in [low, high]; booleans and floats with a fraction are refused."""
    if value is None:
        if required:
            raise malformed(f"{field} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise malformed(f"{field} must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise malformed(f"{field} must be an integer")
        value = int(value)
    if not low <= value <= high:
        raise malformed(f"{field} must be between {low} and {high}")
    return int(value)


def channel_spec_from_wire(body: dict[str, Any], defaults: dict[str, Any] | None = None) -> ChannelSpec:
    """Build a validated ``ChannelSpec`` from a ``POST /channels`` body (wire names, camelCase)."""
    d = defaults or {}
    name = check_channel_name(body.get("name"))
    lease = check_int("leaseMs", body.get("leaseMs", d.get("leaseMs")), 1, MAX_LEASE_MS)
    depth = check_int("maxDepth", body.get("maxDepth", d.get("maxDepth")), 1, MAX_DEPTH)
    wait = check_int("maxWaitMs", body.get("maxWaitMs", d.get("maxWaitMs")), 1, MAX_WAIT_MS)
    grace = check_int("graceMs", body.get("graceMs", d.get("graceMs")), 0, MAX_GRACE_MS)
    return ChannelSpec(
        name=name,
        lease_ms=DEFAULT_LEASE_MS if lease is None else lease,
        max_depth=depth,
        max_wait_ms=wait,
        grace_ms=DEFAULT_GRACE_MS if grace is None else grace,
    )
