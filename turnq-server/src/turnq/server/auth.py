"""API keys with roles, checked before any channel logic runs.

Keys are compared in constant time (``hmac.compare_digest``) against every configured key, so timing reveals
neither which key nor how much of one matched. A key is never logged or echoed in an error.
"""

from __future__ import annotations

import fnmatch
import hmac
from dataclasses import dataclass, field
from enum import StrEnum

from turnq.core import ErrorCode, TurnqError


class Role(StrEnum):
    ADMIN = "admin"
    CLIENT = "client"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key, what it may do, and (optionally) which channel names it may touch (glob patterns)."""

    key: str
    role: Role = Role.ADMIN
    channels: tuple[str, ...] = field(default=())
    name: str = ""

    def allows_channel(self, channel: str) -> bool:
        return not self.channels or any(fnmatch.fnmatchcase(channel, p) for p in self.channels)


# What the anonymous caller is, when the server runs with --insecure-no-auth.
OPEN_ACCESS = ApiKey(key="", role=Role.ADMIN, name="insecure-no-auth")


class Authenticator:
    def __init__(self, keys: list[ApiKey], *, required: bool = True) -> None:
        self._keys = [(k.key.encode(), k) for k in keys]
        self.required = required

    def identify(self, presented: str | None) -> ApiKey:
        """The key's grant, or 401 UNAUTHORIZED."""
        if not self.required:
            return OPEN_ACCESS
        if not presented:
            raise TurnqError(ErrorCode.UNAUTHORIZED, "missing API key: send the x-api-key header")
        candidate = presented.encode()
        found: ApiKey | None = None
        for secret, key in self._keys:  # no early exit: constant time over the key list
            if hmac.compare_digest(secret, candidate):
                found = key
        if found is None:
            raise TurnqError(ErrorCode.UNAUTHORIZED, "invalid API key")
        return found

    @staticmethod
    def require(key: ApiKey, *, admin: bool = False, channel: str | None = None) -> None:
        """403 FORBIDDEN unless ``key`` has the role and may touch ``channel``."""
        if admin and key.role is not Role.ADMIN:
            raise TurnqError(ErrorCode.FORBIDDEN, "this action needs an admin key")
        if channel is not None and not key.allows_channel(channel):
            raise TurnqError(ErrorCode.FORBIDDEN, f"this key may not use channel {channel!r}")
