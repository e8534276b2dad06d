"""The first few tickets of an ordering, as far as a unit knows them."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence

from turnq.core import Ticket

# A ticket's place in an ordering, or None when the ticket is not in that ordering's set at all.
Key = Callable[[Ticket], "tuple[int, int] | None"]


def by_seq(t: Ticket) -> tuple[int, int] | None:
    return (t.seq, 0)


def by_grace(t: Ticket) -> tuple[int, int] | None:
    return None if t.grace_deadline is None else (t.grace_deadline, t.seq)


def by_wait(t: Ticket) -> tuple[int, int] | None:
    return None if t.wait_deadline is None else (t.wait_deadline, t.seq)


class Front:
    """A sorted list that is exactly the first tickets of an ordering (the line by ``seq``, or the tickets with a
    grace or wait deadline by that deadline). ``complete`` says it holds the whole set.

    Adding a ticket keeps the list a true prefix when the ticket sorts before its last element (or the list is
    complete); removing one always does. So a unit can answer "who is first" after its own changes without
    asking the database again, and knows when it must (``known`` is False).
    """

    __slots__ = ("_keys", "complete", "items", "key")

    def __init__(self, key: Key, items: Iterable[Ticket] = (), complete: bool = True) -> None:
        self.key = key
        self.items: list[Ticket] = []
        self._keys: list[tuple[int, int]] = []
        self.complete = complete
        for t in items:
            self._insert(t)

    @property
    def known(self) -> bool:
        """Whether the first element (or that there is none) is known without asking the database."""
        return bool(self.items) or self.complete

    def reset(self, items: Iterable[Ticket], complete: bool) -> None:
        self.items.clear()
        self._keys.clear()
        self.complete = complete
        for t in items:
            self._insert(t)

    def refill(self, stored: Sequence[Ticket], limit: int, own: Iterable[Ticket]) -> None:
        """Rebuild from the database's first ``limit`` rows (which leave out the tickets a unit changed) and
        the unit's own versions of those tickets.

        The first rows of the union are among the first rows of each part, so the merged list is a true prefix
        up to the last stored row's key, and complete when the database had fewer than ``limit`` rows.
        """
        seen = {t.seq for t in stored}
        self.reset([*stored, *(t for t in own if t.seq not in seen)], complete=True)
        if len(stored) >= limit:
            last = self.key(stored[-1])
            assert last is not None
            self.reset([t for t in list(self.items) if self._key_le(t, last)], complete=False)

    def _key_le(self, t: Ticket, bound: tuple[int, int]) -> bool:
        k = self.key(t)
        return k is not None and k <= bound

    def _insert(self, t: Ticket) -> None:
        k = self.key(t)
        if k is None:
            return
        i = bisect.bisect_left(self._keys, k)
        self._keys.insert(i, k)
        self.items.insert(i, t)

    def add(self, t: Ticket) -> None:
        """A ticket joined the set (or came back with a new key)."""
        k = self.key(t)
        if k is not None and (self.complete or (self._keys and k < self._keys[-1])):
            self._insert(t)

    def discard(self, seq: int) -> None:
        """A ticket left the set (or is about to be re-added with a new key)."""
        for i, t in enumerate(self.items):
            if t.seq == seq:
                del self.items[i]
                del self._keys[i]
                return

    def index(self, seq: int) -> int | None:
        for i, t in enumerate(self.items):
            if t.seq == seq:
                return i
        return None
