"""Fixtures for the client tests: a real ``turnq serve`` on a free loopback port, a TCP proxy that can cut
connections, and the environment for ``turnq`` subprocesses. Every wait is bounded."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from turnq.client.testing import ServerProcess, TcpProxy


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    srv = ServerProcess()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def channel() -> str:
    """A fresh channel name per test, with characters that need escaping in a path."""
    return f"test/{uuid.uuid4().hex[:8]} ch"


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    path = tmp_path / "locks"
    path.mkdir()
    return path


@pytest.fixture
def cli_env(lock_dir: Path) -> dict[str, str]:
    """Environment for ``turnq`` subprocesses: only the client's commands load (faster start), no server."""
    env = dict(os.environ)
    env["TURNQ_LOCK_DIR"] = str(lock_dir)
    env["TURNQ_LOAD_PLUGINS"] = "client_cli"
    env.pop("TURNQ_URL", None)
    env.pop("TURNQ_API_KEY", None)
    return env


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[TcpProxy]:
    p = TcpProxy(server.port)
    try:
        yield p
    finally:
        p.close()
