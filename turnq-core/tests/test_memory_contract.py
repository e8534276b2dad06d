from collections.abc import Callable

import pytest
from turnq.core.memory import MemoryBackend
from turnq.core.store import Backend
from turnq.core.testing import BackendContract


class TestMemoryBackend(BackendContract):
    durable = False

    @pytest.fixture
    def make_backend(self) -> Callable[[], Backend]:
        return MemoryBackend
