"""pytest plugin (entry point ``pytest11``) that ships turnq's test fixtures to backend authors."""

from __future__ import annotations

import pytest

from .contract import ManualClock


@pytest.fixture
def turnq_clock() -> ManualClock:
    """A millisecond clock that moves only when the test calls ``advance``."""
    return ManualClock()
