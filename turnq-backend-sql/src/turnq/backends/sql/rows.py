"""Rows to model objects and back, by column position so the same code reads sqlite3 rows and asyncpg records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from turnq.core import ChannelSpec, ChannelView, Grant, Ticket

# Column order of every statement that returns a channel or a ticket; the engines' SQL follows these lists.
CHANNEL_COLUMNS = (
    "id",
    "name",
    "lease_ms",
    "max_depth",
    "max_wait_ms",
    "grace_ms",
    "created_at",
    "fencing",
    "seq",
    "ticket_count",
    "graced_count",
    "version",
    "holder_client_id",
    "holder_request_id",
    "holder_granted_at",
    "holder_lease_deadline",
    "holder_fencing_token",
    "holder_enqueued_at",
)
TICKET_COLUMNS = (
    "seq",
    "client_id",
    "request_id",
    "enqueued_at",
    "wait_deadline",
    "grace_deadline",
    "attachment",
)
N_CHANNEL = len(CHANNEL_COLUMNS)
N_TICKET = len(TICKET_COLUMNS)


def columns(names: Sequence[str], prefix: str = "") -> str:
    return ", ".join(prefix + n for n in names)


@dataclass(slots=True)
class ChannelRow:
    """A channel row as a unit holds it: read once under the lock, written back once if it changed."""

    id: int
    spec: ChannelSpec
    fencing: int
    seq: int
    ticket_count: int
    graced_count: int
    version: int
    holder: Grant | None

    def state(self) -> tuple[Any, ...]:
        """The fields a unit may change, to tell whether the row needs writing back."""
        return (self.fencing, self.seq, self.ticket_count, self.graced_count, self.holder)

    def view(self) -> ChannelView:
        return ChannelView(self.spec, self.ticket_count, self.holder)

    def write_params(self) -> tuple[Any, ...]:
        """Values for ``UPDATE … SET fencing, seq, ticket_count, graced_count, version, holder_* … WHERE id``."""
        return channel_write_params(
            self.id, self.fencing, self.seq, self.ticket_count, self.graced_count, self.version, self.holder
        )


def channel_write_params(
    channel_id: int,
    fencing: int,
    seq: int,
    ticket_count: int,
    graced_count: int,
    version: int,
    holder: Grant | None,
) -> tuple[Any, ...]:
    """A channel row's values in CHANNEL_WRITE_COLUMNS order, then its id (for the WHERE)."""
    h = holder
    return (
        fencing,
        seq,
        ticket_count,
        graced_count,
        version,
        h.client_id if h else None,
        h.request_id if h else None,
        h.granted_at if h else None,
        h.lease_deadline if h else None,
        h.fencing_token if h else None,
        h.enqueued_at if h else None,
        channel_id,
    )


# The SET list matching ChannelRow.write_params (the id comes last, for the WHERE).
CHANNEL_WRITE_COLUMNS = CHANNEL_COLUMNS[CHANNEL_COLUMNS.index("fencing") :]


def channel_from_row(r: Sequence[Any], at: int = 0) -> ChannelRow:
    spec = ChannelSpec(
        name=r[at + 1],
        lease_ms=r[at + 2],
        max_depth=r[at + 3],
        max_wait_ms=r[at + 4],
        grace_ms=r[at + 5],
        created_at=r[at + 6],
    )
    holder = None
    if r[at + 12] is not None:
        holder = Grant(
            client_id=r[at + 12],
            request_id=r[at + 13],
            granted_at=r[at + 14],
            lease_deadline=r[at + 15],
            fencing_token=r[at + 16],
            enqueued_at=r[at + 17],
        )
    return ChannelRow(
        id=r[at],
        spec=spec,
        fencing=r[at + 7],
        seq=r[at + 8],
        ticket_count=r[at + 9],
        graced_count=r[at + 10],
        version=r[at + 11],
        holder=holder,
    )


def ticket_from_row(r: Sequence[Any], at: int = 0) -> Ticket:
    return Ticket(
        seq=r[at],
        client_id=r[at + 1],
        request_id=r[at + 2],
        enqueued_at=r[at + 3],
        wait_deadline=r[at + 4],
        grace_deadline=r[at + 5],
        attachment=r[at + 6],
    )


def ticket_params(t: Ticket) -> tuple[Any, ...]:
    """Values in TICKET_COLUMNS order."""
    return (t.seq, t.client_id, t.request_id, t.enqueued_at, t.wait_deadline, t.grace_deadline, t.attachment)


def spec_params(spec: ChannelSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "lease_ms": spec.lease_ms,
        "max_depth": spec.max_depth,
        "max_wait_ms": spec.max_wait_ms,
        "grace_ms": spec.grace_ms,
        "created_at": spec.created_at,
    }


def nearest(*deadlines: int | None) -> int | None:
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None
