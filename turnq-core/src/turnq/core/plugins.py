"""Loading plugins and choosing a backend from a database URL.

Plugins are found through the ``turnq`` entry-point group. ``TURNQ_LOAD_PLUGINS`` (a comma-separated list of
entry-point names) limits which load, as a way to run with a known set.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pluggy

from . import hookspecs
from .hookspecs import BackendFactory
from .store import Backend


class UnknownBackendError(ValueError):
    """A database URL whose scheme no installed backend serves."""


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("turnq")
    pm.add_hookspecs(hookspecs)
    allowed = os.environ.get("TURNQ_LOAD_PLUGINS")
    names = {n.strip() for n in allowed.split(",") if n.strip()} if allowed is not None else None
    for ep in importlib.metadata.entry_points(group="turnq"):
        if names is not None and ep.name not in names:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        pm.register(ep.load(), name=ep.name)
    return pm


def backend_schemes() -> dict[str, BackendFactory]:
    schemes: dict[str, BackendFactory] = {}
    for mapping in reversed(get_plugin_manager().hook.turnq_backend_schemes()):
        schemes.update(mapping)
    return schemes


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe to log or show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def open_backend(url: str) -> Backend:
    """Build (not yet open) the backend that serves ``url``'s scheme."""
    scheme = urlsplit(url).scheme.split("+", 1)[0].lower()
    if scheme == "postgres":
        scheme = "postgresql"
    schemes = backend_schemes()
    factory = schemes.get(scheme)
    if factory is None:
        installed = ", ".join(f"{s}://" for s in sorted(schemes)) or "none"
        raise UnknownBackendError(
            f"no installed backend serves {redact_url(url)!r} (scheme {scheme!r}); installed: {installed}"
        )
    return factory(url)


def plugin_list() -> list[dict[str, Any]]:
    pm = get_plugin_manager()
    return [
        {"name": name, "hooks": sorted(h.name for h in pm.get_hookcallers(p) or [])}
        for name, p in pm.list_name_plugin()
        if p is not None
    ]
