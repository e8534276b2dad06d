"""turnq.server: the aiohttp HTTP/SSE server that speaks the turnq wire protocol."""

from .app import create_app
from .config import ServerConfig, build_config

__all__ = ["ServerConfig", "build_config", "create_app"]
