"""Values the ring store hands out: records, cursor info and statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cbor2


class Record(NamedTuple):
    """One stored record. ``payload`` is the CBOR bytes; :meth:`value` decodes them."""

    seq: int
    ts: float
    check: str
    target: str
    payload: bytes

    def value(self) -> Any:
        """The payload decoded from CBOR."""
        return cbor2.loads(self.payload)


@dataclass(frozen=True)
class CursorInfo:
    """A cursor as seen from outside."""

    name: str
    position: int
    """Next seq the cursor will read."""
    lost: int
    """Records the ring overwrote before this cursor committed past them."""
    behind: int
    """Records stored and not yet committed by this cursor."""


@dataclass
class RecoveryInfo:
    """What opening the store found on disk."""

    seconds: float = 0.0
    segments: int = 0
    records: int = 0
    truncated_bytes: int = 0
    """Torn or corrupt tails cut off the end of segments."""
    skipped_records: int = 0
    """Records lost in corrupt stretches inside segments (from the gap in seqs)."""
    skipped_bytes: int = 0
    bad_files: list[str] = field(default_factory=list)
    """Files that held no valid record, renamed to ``*.bad`` and left for inspection."""
    problems: list[str] = field(default_factory=list)
    """One line per problem, each naming the file."""


@dataclass(frozen=True)
class StoreStats:
    """Counters for ``meshmon status`` and the control API (``dataclasses.asdict`` → JSON)."""

    records: int
    bytes: int
    capacity_bytes: int
    segments: int
    series: int
    oldest_seq: int | None
    newest_seq: int | None
    durable_seq: int
    """Every record up to this seq has been fsynced (or written, under ``fsync = "never"``)."""
    fsync: str
    dropped_segments: int
    dropped_records: int
    read_errors: int
    """Records that failed their checksum when read back after recovery."""
    index_bytes: int
    """Memory held by the packed per-frame arrays and the series table (estimate)."""
    cursors: dict[str, dict[str, int]]
    """Per cursor: position, lost, behind."""
    lost_records: int
    """Sum of ``lost`` over the cursors."""
    recovery: RecoveryInfo
    health: dict[str, Any] = field(default_factory=dict)
    """Disk health (:meth:`meshmon.store.outage.Outages.state`): ``state`` ok/failing, and
    while failing ``since``, ``reason``, ``advice``, ``buffered``; always ``lost`` (results
    dropped because the disk refused them, persisted), ``last_outage`` and
    ``recovery_report`` (the last recovery that found damage, persisted)."""
    store_id: str = ""
    """The store's stable identity (:mod:`meshmon.store.identity`)."""
