"""The wire protocol without I/O: what to send for each action and how to read the answer.

Both clients (async and sync) drive the same :class:`Call` values through their own transport, so every path,
body shape and error mapping is written once and the two can never drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from turnq.core import ErrorCode, TurnqError

from .models import Channel, Enqueued, Event, Health, QueueInfo

T = TypeVar("T")

# A status without a JSON body (a proxy's 502, say) still maps to the nearest protocol code.
_STATUS_CODES = {
    400: ErrorCode.MALFORMED_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.CHANNEL_NOT_FOUND,
    409: ErrorCode.CHANNEL_EXISTS,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    429: ErrorCode.MAX_DEPTH_EXCEEDED,
    502: ErrorCode.BACKEND_UNAVAILABLE,
    503: ErrorCode.BACKEND_UNAVAILABLE,
    504: ErrorCode.BACKEND_UNAVAILABLE,
}


def channel_path(name: str, *rest: str) -> str:
    """``/channels/{name}/…`` with the name fully escaped, so ``a/b`` stays one path segment (``a%2Fb``)."""
    return "/".join(("/channels", quote(name, safe=""), *rest))


def _none(_: Any) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to decode its success. ``idempotent`` calls may be re-sent after a lost answer."""

    method: str
    path: str
    decode: Callable[[Any], T]
    json: dict[str, Any] | None = None
    params: dict[str, str] = field(default_factory=dict)
    idempotent: bool = False
    auth: bool = True


def error_from_response(status: int, body: bytes) -> TurnqError:
    """The server's ``{code, message}`` as a TurnqError, or the closest code when the body is not ours."""
    message = ""
    code: ErrorCode | None = None
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        raw_code = data.get("code")
        message = str(data.get("message", ""))
        if isinstance(raw_code, str):
            try:
                code = ErrorCode(raw_code)
            except ValueError:
                message = f"{raw_code}: {message}"
    if code is None:
        code = _STATUS_CODES.get(status, ErrorCode.INTERNAL_ERROR)
    if not message:
        text = body[:200].decode("utf-8", "replace").strip()
        message = f"HTTP {status}" + (f": {text}" if text else "")
    return TurnqError(code, message)


def decode_body(call: Call[T], status: int, body: bytes) -> T:
    """The decoded success value, or the error the answer carries."""
    if not 200 <= status < 300:
        raise error_from_response(status, body)
    if not body:
        return call.decode(None)
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise TurnqError(ErrorCode.INTERNAL_ERROR, f"the server answered with invalid JSON: {exc}") from exc
    return call.decode(data)


def decode_event(name: str, data: str) -> Event:
    """An SSE frame as an :class:`Event`; data that is not a JSON object is kept under ``"raw"``."""
    try:
        parsed = json.loads(data) if data else {}
    except ValueError:
        parsed = {"raw": data}
    if not isinstance(parsed, dict):
        parsed = {"raw": parsed}
    return Event(name, parsed)


def _compact(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


# ------------------------------------------------------------------------------------------- actions


def health() -> Call[Health]:
    return Call("GET", "/health", Health.from_wire, idempotent=True, auth=False)


def create_channel(
    name: str,
    *,
    lease_ms: int | None = None,
    max_depth: int | None = None,
    max_wait_ms: int | None = None,
    grace_ms: int | None = None,
) -> Call[Channel]:
    body = _compact(name=name, leaseMs=lease_ms, maxDepth=max_depth, maxWaitMs=max_wait_ms, graceMs=grace_ms)
    return Call("POST", "/channels", Channel.from_wire, json=body)


def list_channels() -> Call[list[Channel]]:
    def decode(data: Any) -> list[Channel]:
        if not isinstance(data, dict) or not isinstance(data.get("channels"), list):
            raise TurnqError(ErrorCode.INTERNAL_ERROR, "unexpected channel list from the server")
        return [Channel.from_wire(c) for c in data["channels"]]

    return Call("GET", "/channels", decode, idempotent=True)


def get_channel(name: str) -> Call[Channel]:
    return Call("GET", channel_path(name), Channel.from_wire, idempotent=True)


def delete_channel(name: str) -> Call[None]:
    return Call("DELETE", channel_path(name), _none)


def enqueue(channel: str, client_id: str) -> Call[Enqueued]:
    def decode(data: Any) -> Enqueued:
        if not isinstance(data, dict) or not isinstance(data.get("requestId"), str):
            raise TurnqError(ErrorCode.INTERNAL_ERROR, "unexpected enqueue answer from the server")
        return Enqueued(client_id, data["requestId"], int(data.get("position", 0)))

    return Call("POST", channel_path(channel, "enqueue"), decode, json={"clientId": client_id})


def subscribe_params(client_id: str, request_id: str) -> dict[str, str]:
    return {"clientId": client_id, "requestId": request_id}


def release(
    channel: str, client_id: str, request_id: str, *, success: bool = True, error: str | None = None
) -> Call[None]:
    result = _compact(success=success, error=error)
    body = {"clientId": client_id, "requestId": request_id, "result": result}
    return Call("POST", channel_path(channel, "release"), _none, json=body)


def abort(channel: str, client_id: str, request_id: str | None = None) -> Call[None]:
    body = _compact(clientId=client_id, requestId=request_id)
    return Call("POST", channel_path(channel, "abort"), _none, json=body)


def renew(channel: str, client_id: str, request_id: str, lease_ms: int | None = None) -> Call[int]:
    def decode(data: Any) -> int:
        if not isinstance(data, dict) or not isinstance(data.get("leaseExpiresAt"), int):
            raise TurnqError(ErrorCode.INTERNAL_ERROR, "unexpected renew answer from the server")
        return int(data["leaseExpiresAt"])

    body = _compact(clientId=client_id, requestId=request_id, leaseMs=lease_ms)
    return Call("POST", channel_path(channel, "renew"), decode, json=body, idempotent=True)


def step(
    channel: str,
    client_id: str,
    name: str,
    event: str,
    *,
    request_id: str | None = None,
    success: bool | None = None,
    error: str | None = None,
) -> Call[None]:
    body = _compact(
        clientId=client_id, requestId=request_id, step=name, event=event, success=success, error=error
    )
    return Call("POST", channel_path(channel, "steps"), _none, json=body)


def queue(channel: str) -> Call[QueueInfo]:
    return Call("GET", channel_path(channel, "queue"), QueueInfo.from_wire, idempotent=True)


def force_release(channel: str) -> Call[None]:
    return Call("DELETE", channel_path(channel, "holder"), _none)
