"""SQL literals for the one script a unit commits with.

A unit's writes, its NOTIFY and ``COMMIT`` go to the server as one simple-protocol query, which takes no
parameters, so the values are written as literals: a round trip less on every change than a parameterised
statement followed by ``COMMIT``. Only integers, NULL and text occur. Text is quoted the one way PostgreSQL
defines for ``standard_conforming_strings = on``, which every turnq connection sets: inside single quotes a
quote is doubled and every other character, backslash included, stands for itself. NUL cannot be stored in
text at all and is refused.
"""

from __future__ import annotations

from collections.abc import Iterable

from turnq.core import ErrorCode, TurnqError

Value = int | str | None


def literal(value: Value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):  # never meant as a number
        raise TypeError("booleans are not written as SQL literals here")
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        if "\x00" in value:
            raise TurnqError(ErrorCode.MALFORMED_REQUEST, "text containing NUL characters cannot be stored")
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def row(values: Iterable[Value]) -> str:
    return "(" + ", ".join(literal(v) for v in values) + ")"
