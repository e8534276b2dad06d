"""PostgreSQL for the tests: ``TURNQ_TEST_POSTGRES_DSN`` if set (e.g. postgresql://postgres@127.0.0.1:5432/test),
else a throwaway server in Docker through testcontainers, else the tests are skipped with the reason.

Each test gets its own schema (``?schema=t_…`` on the URL), dropped afterwards, so tests never see each
other's channels or notifications.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest


def with_params(dsn: str, **params: str) -> str:
    parts = urlsplit(dsn)
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    dsn = os.environ.get("TURNQ_TEST_POSTGRES_DSN")
    if dsn:
        yield dsn
        return
    if shutil.which("docker") is None:
        pytest.skip("no PostgreSQL: set TURNQ_TEST_POSTGRES_DSN, or install Docker for testcontainers")
    try:
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:
            from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:16-alpine", driver=None)
        container.start()
    except Exception as exc:  # no daemon, no image, no permission
        pytest.skip(f"no PostgreSQL: TURNQ_TEST_POSTGRES_DSN is not set and testcontainers failed ({exc})")
    try:
        yield container.get_connection_url()
    finally:
        container.stop()


@pytest.fixture
async def schema(postgres_dsn: str) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    conn = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
def pg_url(postgres_dsn: str, schema: str) -> str:
    """A turnq URL for a fresh schema of its own."""
    return with_params(postgres_dsn, schema=schema)


@pytest.fixture
async def pg_urls(postgres_dsn: str) -> AsyncIterator[Callable[[], str]]:
    """Makes a turnq URL with a fresh schema on every call (for tests that need many); all are dropped after."""
    made: list[str] = []

    def make() -> str:
        made.append(f"t_{uuid.uuid4().hex[:16]}")
        return with_params(postgres_dsn, schema=made[-1])

    yield make
    conn = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        for name in made:
            await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    finally:
        await conn.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "pg_restart: restarts the local PostgreSQL server (runs with -m pg_restart or TURNQ_TEST_PG_RESTART=1)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = "pg_restart" in (config.getoption("markexpr") or "") or os.environ.get("TURNQ_TEST_PG_RESTART")
    if chosen:
        return
    skip = pytest.mark.skip(reason="restarts the local PostgreSQL server: select with -m pg_restart")
    for item in items:
        if "pg_restart" in item.keywords:
            item.add_marker(skip)
