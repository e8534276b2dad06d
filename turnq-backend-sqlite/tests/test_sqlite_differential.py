import asyncio
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from turnq.backends.sql.line import PROBE_RANKS
from turnq.backends.sql.testing import Script, compare_with_memory, scripts
from turnq.backends.sqlite import SqliteBackend
from turnq.backends.sqlite import backend as sqlite_backend
from turnq.backends.sqlite import statements as q


@given(script=scripts())
@settings(max_examples=40, deadline=None)
def test_sqlite_behaves_like_memory(tmp_path_factory: object, script: Script) -> None:
    base: Path = tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    url = f"sqlite:///{base}/diff-{uuid.uuid4().hex}.db"
    asyncio.run(compare_with_memory(lambda: SqliteBackend(url), script))


@given(script=scripts())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_sqlite_with_a_small_probe_behaves_like_memory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, script: Script
) -> None:
    """The same with the probe cut to the first three tickets, so the lines of a short script outgrow it and
    every read the unit cannot answer from the probe goes to the database."""
    monkeypatch.setattr(sqlite_backend, "PROBE_RANKS", (0, 1, 2))
    monkeypatch.setattr(q, "FRONT", q.FRONT.replace(f"LIMIT {max(PROBE_RANKS) + 1}", "LIMIT 3"))
    url = f"sqlite:///{tmp_path_factory.getbasetemp()}/diff-{uuid.uuid4().hex}.db"
    asyncio.run(compare_with_memory(lambda: SqliteBackend(url), script))
