"""The tickets of a line at known ranks, as far as a unit knows them."""

from __future__ import annotations

from collections.abc import Iterable

from turnq.core import Ticket
from turnq.core.service import NOTIFY_RANK

# The ranks a unit reads when it opens: the holder and the next in line (a release grants rank 1), and the
# ticket that will hear its new position after the holder leaves (rank NOTIFY_RANK + 1 today is NOTIFY_RANK
# then). Derived from the rule itself, so the probe follows it if it changes.
PROBE_RANKS: tuple[int, ...] = tuple(sorted({0, 1, NOTIFY_RANK + 1}))


class Line:
    """Tickets at exact ranks of the current line (not necessarily contiguous).

    A removal moves every ticket behind the removed one up by one, whatever the removed ticket's rank, so the
    known ranks stay exact without asking the database; a push lands at the back, at the rank the line's
    length gives it. ``complete`` says every rank is known, so a lookup that misses is a true miss.
    """

    __slots__ = ("by_rank", "depth")

    def __init__(self, depth: int, known: Iterable[tuple[int, Ticket]] = ()) -> None:
        self.depth = depth
        self.by_rank: dict[int, Ticket] = dict(known)

    @property
    def complete(self) -> bool:
        return len(self.by_rank) >= self.depth

    def get(self, rank: int) -> Ticket | None:
        return self.by_rank.get(rank)

    def rank_of(self, seq: int) -> int | None:
        for r, t in self.by_rank.items():
            if t.seq == seq:
                return r
        return None

    def learn(self, rank: int, ticket: Ticket) -> None:
        self.by_rank[rank] = ticket

    def push(self, ticket: Ticket) -> None:
        self.by_rank[self.depth] = ticket
        self.depth += 1

    def remove(self, seq: int) -> None:
        self.by_rank = {(r if t.seq < seq else r - 1): t for r, t in self.by_rank.items() if t.seq != seq}
        self.depth -= 1
