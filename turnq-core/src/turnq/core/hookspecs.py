"""The turnq plugin hooks. Plugins implement them with ``@turnq.core.hookimpl`` and register through the
``turnq`` entry-point group."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .store import Backend

hookspec = pluggy.HookspecMarker("turnq")
hookimpl = pluggy.HookimplMarker("turnq")

BackendFactory = Callable[[str], "Backend"]


@hookspec
def turnq_backend_schemes() -> Mapping[str, BackendFactory]:  # type: ignore[empty-body]
    """Map URL schemes (``sqlite``, ``postgresql``…) to factories that build a backend from a database URL."""


@hookspec
def turnq_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add subcommands to the ``turnq`` command; each sets ``func(args) -> int`` as its default."""
