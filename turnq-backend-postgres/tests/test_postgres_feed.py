"""The feed's ordering: batches reach listeners in commit order per channel, whether committed here (delivered
at once) or elsewhere (heard through NOTIFY), and a missing notification never holds a channel back for good."""

from __future__ import annotations

import asyncio

import pytest
from turnq.backends.postgres import feed as feed_module
from turnq.backends.postgres.feed import Feed
from turnq.backends.postgres.payload import Envelope, encode
from turnq.backends.sql import ListenerSet
from turnq.core import EventBatch
from turnq.core.testing import Recorder


def _feed() -> tuple[Feed, Recorder]:
    listeners = ListenerSet()
    recorder = Recorder()
    listeners.add(recorder)

    async def no_connection() -> object:
        raise AssertionError("not used")

    return Feed(listeners, "here", "turnq_events", no_connection), recorder  # type: ignore[arg-type]


def _batch(version: int) -> EventBatch:
    return EventBatch("ch", (), version, version)


def _heard(feed: Feed, origin: str, version: int, pid: int = 1) -> None:
    for payload in encode(Envelope(origin, 7, version, _batch(version))):
        feed._on_notify(None, pid, "turnq_events", payload)


def _order(recorder: Recorder) -> list[int | None]:
    return [b.next_deadline for b in recorder.batches]


async def test_local_batches_wait_for_earlier_remote_ones() -> None:
    feed, recorder = _feed()
    feed.local(7, 5, _batch(5))  # nothing seen yet: delivered
    _heard(feed, "there", 6)
    feed.local(7, 8, _batch(8))  # 7 (another process's) not heard yet: held
    assert _order(recorder) == [5, 6]
    _heard(feed, "there", 7)
    assert _order(recorder) == [5, 6, 7, 8]
    feed.local(7, None, _batch(0))  # a unit that notified nobody has no place in the order
    assert _order(recorder) == [5, 6, 7, 8, 0]
    await feed.stop()


async def test_own_notifications_are_ignored_unless_the_commit_was_in_doubt() -> None:
    feed, recorder = _feed()
    feed.local(7, 1, _batch(1))
    _heard(feed, "here", 1)
    assert _order(recorder) == [1]
    feed.ambiguous(7, 2)
    _heard(feed, "here", 2)
    assert _order(recorder) == [1, 2]
    await feed.stop()


async def test_a_lost_notification_holds_a_channel_back_only_briefly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_module, "HOLD_S", 0.05)
    feed, recorder = _feed()
    feed.local(7, 1, _batch(1))
    feed.local(7, 3, _batch(3))  # 2 will never be heard
    feed.local(7, 4, _batch(4))
    assert _order(recorder) == [1]
    await asyncio.sleep(0.2)
    assert _order(recorder) == [1, 3, 4, 4]  # and a resync: batch 2 was lost
    assert [b.resync for b in recorder.batches] == [False, False, False, True]
    await feed.stop()


@pytest.mark.parametrize("next_from", ["here", "there"])
async def test_batches_held_before_a_reconnect_go_before_later_ones(next_from: str) -> None:
    feed, recorder = _feed()
    feed.local(7, 1, _batch(1))
    feed.local(7, 3, _batch(3))  # 2 came from elsewhere while the listener was down: its NOTIFY is gone
    feed._seen.clear()  # the listener reconnected (Feed._run): counting starts afresh
    if next_from == "here":
        feed.local(7, 4, _batch(4))
    else:
        _heard(feed, "there", 4)
    # 3 waited for nothing that can still come: it goes first, then a resync (2 was lost), then 4
    assert _order(recorder) == [1, 3, 3, 4]
    assert [b.resync for b in recorder.batches] == [False, False, True, False]
    await feed.stop()


async def test_later_batches_from_elsewhere_wait_for_a_commit_on_its_way() -> None:
    """Another process commits the next batch the moment ours releases the row lock; its notification can arrive
    before our COMMIT's answer. It waits for ours."""
    feed, recorder = _feed()
    feed.local(7, 1, _batch(1))
    feed.committing(7, 2)
    _heard(feed, "there", 4)  # ours are 2 and 3 (a group)
    assert _order(recorder) == [1]
    feed.local(7, 2, _batch(2))
    feed.local(7, 3, _batch(3))
    feed.committed(7)
    assert _order(recorder) == [1, 2, 3, 4]
    await feed.stop()


async def test_a_failed_commit_on_its_way_holds_nothing_back() -> None:
    feed, recorder = _feed()
    feed.local(7, 1, _batch(1))
    feed.committing(7, 2)
    _heard(feed, "there", 2)  # ours failed; theirs took the version
    feed.committed(7)
    assert _order(recorder) == [1, 2]
    await feed.stop()
