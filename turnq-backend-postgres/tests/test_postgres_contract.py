from collections.abc import Callable

import pytest
from turnq.backends.postgres import PostgresBackend
from turnq.core import Backend
from turnq.core.testing import BackendContract


class TestPostgresBackend(BackendContract):
    durable = True

    @pytest.fixture
    def make_backend(self, pg_url: str) -> Callable[[], Backend]:
        return lambda: PostgresBackend(pg_url)
