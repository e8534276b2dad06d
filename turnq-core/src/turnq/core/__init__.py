"""turnq.core: the turn-queue rules, model, errors and plugin hooks shared by every turnq distribution."""

from .errors import ErrorCode, TurnqError
from .hookspecs import hookimpl, hookspec
from .model import ChannelSpec, ChannelView, Event, EventBatch, Grant, QueueView, Ticket
from .plugins import UnknownBackendError, backend_schemes, get_plugin_manager, open_backend, redact_url
from .service import TurnService, wall_ms
from .store import Backend, ChannelUnit, Listener

__all__ = [
    "Backend",
    "ChannelSpec",
    "ChannelUnit",
    "ChannelView",
    "ErrorCode",
    "Event",
    "EventBatch",
    "Grant",
    "Listener",
    "QueueView",
    "Ticket",
    "TurnService",
    "TurnqError",
    "UnknownBackendError",
    "backend_schemes",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "open_backend",
    "redact_url",
    "wall_ms",
]
