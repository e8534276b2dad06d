"""turnq.server: the aiohttp HTTP/SSE server that speaks the turnq wire protocol.

Names are imported on first use: every ``turnq`` command loads this distribution's CLI plugin, and only
``turnq serve`` needs aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .config import ServerConfig, build_config

_WHERE = {"create_app": ".app", "ServerConfig": ".config", "build_config": ".config"}
__all__ = ["ServerConfig", "build_config", "create_app"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)
