"""The commit script's literals read back exactly what was written, whatever the text (quotes, backslashes,
unicode, SQL fragments), on the real server with the settings turnq connections use."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from turnq.backends.postgres.literals import literal
from turnq.core import ErrorCode, TurnqError

TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=200)
NASTY = ["'", "''", "\\", "\\'", "'; DROP TABLE x; --", "$$", "$a$ $a$", "E'\\x41'", "é☃\U0001f600", "\n\r\t"]


@pytest.fixture
async def conn(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(postgres_dsn, timeout=10, server_settings={"standard_conforming_strings": "on"})
    yield c
    await c.close()


async def test_nasty_text_round_trips(conn: asyncpg.Connection) -> None:
    for value in NASTY:
        assert await conn.fetchval(f"SELECT {literal(value)}") == value


@given(values=st.lists(TEXT, min_size=1, max_size=20))
@settings(max_examples=50, deadline=None)
async def test_any_text_round_trips(postgres_dsn: str, values: list[str]) -> None:
    c = await asyncpg.connect(postgres_dsn, timeout=10, server_settings={"standard_conforming_strings": "on"})
    try:
        sql = "SELECT ARRAY[" + ", ".join(f"{literal(v)}::text" for v in values) + "]"
        assert await c.fetchval(sql) == values
    finally:
        await c.close()


def test_numbers_null_and_nul() -> None:
    assert (literal(None), literal(-42), literal(2**62)) == ("NULL", "-42", str(2**62))
    with pytest.raises(TurnqError) as exc:
        literal("a\x00b")
    assert exc.value.code is ErrorCode.MALFORMED_REQUEST
    with pytest.raises(TypeError):
        literal(True)
