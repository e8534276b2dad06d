import asyncio
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from turnq.backends.postgres import PostgresBackend
from turnq.backends.sql.testing import Script, compare_with_memory, scripts


@given(script=scripts())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_postgres_behaves_like_memory(pg_urls: Callable[[], str], script: Script) -> None:
    url = pg_urls()
    asyncio.run(compare_with_memory(lambda: PostgresBackend(url), script))
