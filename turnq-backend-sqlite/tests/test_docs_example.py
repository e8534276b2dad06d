"""The example backend in docs/writing-a-backend.md still works: its code, taken from the page, behaves like
memory:// on random scripts and keeps its state across a reopen."""

from __future__ import annotations

import asyncio
import re
import sys
import types
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from turnq.backends.sql.testing import Script, compare_with_memory, scripts
from turnq.core import ChannelSpec, TurnService

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing-a-backend.md"


@pytest.fixture(scope="module")
def example() -> types.ModuleType:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    source = "\n\n".join(b for b in blocks if "BackendContract" not in b)
    module = types.ModuleType("turnq_jsonfile_example")
    sys.modules[module.__name__] = module  # dataclass and annotation lookups need the module registered
    exec(compile(source, str(DOC), "exec"), module.__dict__)
    return module


@given(script=scripts(max_steps=30))
@settings(max_examples=15, deadline=None)
def test_example_behaves_like_memory(
    example: types.ModuleType, tmp_path_factory: pytest.TempPathFactory, script: Script
) -> None:
    path = tmp_path_factory.getbasetemp() / f"{uuid.uuid4().hex}.json"
    asyncio.run(compare_with_memory(lambda: example.JsonFileBackend(f"jsonfile://{path}"), script))


async def test_example_survives_a_reopen(example: types.ModuleType, tmp_path: Path) -> None:
    url = f"jsonfile://{tmp_path}/state.json"
    backend = example.JsonFileBackend(url)
    await backend.open()
    await TurnService(backend).create_channel(ChannelSpec("ch"))
    await TurnService(backend).enqueue("ch", "c1")
    await backend.close()
    again = example.JsonFileBackend(url)
    await again.open()
    view = await TurnService(again).get_channel("ch")
    assert view.holder is not None and view.holder.client_id == "c1"
    assert example.turnq_backend_schemes() == {"jsonfile": example.JsonFileBackend}
