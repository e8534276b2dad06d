"""Request ids: what clients parse them as (UUIDs) and what the rules need of them (no two alike)."""

from __future__ import annotations

import multiprocessing
import random
import uuid

from turnq.core.service import new_request_id


def test_request_ids_are_version_4_uuids_in_canonical_text() -> None:
    for _ in range(2000):
        text = new_request_id()
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_request_ids_do_not_repeat() -> None:
    ids = {new_request_id() for _ in range(200_000)}
    assert len(ids) == 200_000


def _ids_in_child(_: int) -> list[str]:
    return [new_request_id() for _ in range(1000)]


def test_forked_processes_draw_different_ids() -> None:
    """Servers started from one parent (a fork per worker) must not share the generator's state."""
    with multiprocessing.get_context("fork").Pool(2) as pool:
        first, second = pool.map(_ids_in_child, [0, 1], chunksize=1)
    assert not set(first) & set(second)


def test_seeding_the_random_module_does_not_repeat_ids() -> None:
    """Programs (and test suites) seed ``random``; two servers seeded alike must still draw different ids."""
    state = random.getstate()
    try:
        random.seed(1234)
        first = new_request_id()
        random.seed(1234)
        second = new_request_id()
    finally:
        random.setstate(state)
    assert first != second
