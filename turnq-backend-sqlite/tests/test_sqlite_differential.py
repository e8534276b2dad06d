import asyncio
import uuid
from pathlib import Path

from hypothesis import given, settings
from turnq.backends.sql.testing import Script, compare_with_memory, scripts
from turnq.backends.sqlite import SqliteBackend


@given(script=scripts())
@settings(max_examples=40, deadline=None)
def test_sqlite_behaves_like_memory(tmp_path_factory: object, script: Script) -> None:
    base: Path = tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    url = f"sqlite:///{base}/diff-{uuid.uuid4().hex}.db"
    asyncio.run(compare_with_memory(lambda: SqliteBackend(url), script))
