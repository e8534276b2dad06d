from collections.abc import Callable
from pathlib import Path

import pytest
from turnq.backends.sqlite import SqliteBackend
from turnq.core import Backend
from turnq.core.testing import BackendContract


class TestSqliteBackend(BackendContract):
    durable = True

    @pytest.fixture
    def make_backend(self, tmp_path: Path) -> Callable[[], Backend]:
        return lambda: SqliteBackend(f"sqlite:///{tmp_path}/turnq.db")


class TestSqliteBackendFullSync(BackendContract):
    """The same rules with every commit flushed to disk."""

    durable = True

    @pytest.fixture
    def make_backend(self, tmp_path: Path) -> Callable[[], Backend]:
        return lambda: SqliteBackend(f"sqlite:///{tmp_path}/turnq.db?synchronous=full")
