"""Server test fixtures; helpers live in server_kit.py (importable because this directory is put on sys.path)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator

import pytest_asyncio

sys.path.insert(0, os.path.dirname(__file__))

from server_kit import Server, make_config, running_server


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    async with running_server(make_config()) as srv:
        yield srv
