"""One error type for every failure a client can be told about.

The protocol answers every failure with ``{"code", "message"}`` and a fixed HTTP status per code, so the code
is the contract and the status is derived from it in one table.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    UNAUTHORIZED = "UNAUTHORIZED"
    NOT_YOUR_TURN = "NOT_YOUR_TURN"
    FORBIDDEN = "FORBIDDEN"
    CHANNEL_NOT_FOUND = "CHANNEL_NOT_FOUND"
    REQUEST_NOT_FOUND = "REQUEST_NOT_FOUND"
    CHANNEL_EXISTS = "CHANNEL_EXISTS"
    CHANNEL_NOT_EMPTY = "CHANNEL_NOT_EMPTY"
    ALREADY_QUEUED = "ALREADY_QUEUED"
    LEASE_EXPIRED = "LEASE_EXPIRED"
    NO_HOLDER = "NO_HOLDER"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    MAX_DEPTH_EXCEEDED = "MAX_DEPTH_EXCEEDED"
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"
    ROUTE_NOT_FOUND = "ROUTE_NOT_FOUND"
    # Raised by clients, never sent by the server: a wait the client bounded itself (or a maxWaitMs eviction).
    WAIT_TIMEOUT = "WAIT_TIMEOUT"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    INTERNAL_ERROR = "INTERNAL_ERROR"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.MALFORMED_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_YOUR_TURN: 403,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.CHANNEL_NOT_FOUND: 404,
    ErrorCode.REQUEST_NOT_FOUND: 404,
    ErrorCode.NO_HOLDER: 404,
    ErrorCode.ROUTE_NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.WAIT_TIMEOUT: 408,
    ErrorCode.CHANNEL_EXISTS: 409,
    ErrorCode.CHANNEL_NOT_EMPTY: 409,
    ErrorCode.ALREADY_QUEUED: 409,
    ErrorCode.LEASE_EXPIRED: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.MAX_DEPTH_EXCEEDED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.BACKEND_UNAVAILABLE: 503,
}


class TurnqError(Exception):
    """A failure with a protocol error code; the server turns it into ``status {"code","message"}``."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message}

    def __repr__(self) -> str:
        return f"TurnqError({self.code.value!r}, {self.message!r})"
