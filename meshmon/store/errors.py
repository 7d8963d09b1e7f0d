"""Errors raised by the ring store; each means one thing and says what to do."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every ring-store error."""


class StoreLocked(StoreError):
    """Another process holds the store directory."""


class StoreClosed(StoreError):
    """The store was closed by this process; open it again to use it."""


class StoreFailed(StoreError):
    """An fsync failed; nothing appended since the last good one is known to be durable.

    After a failed fsync the kernel may have dropped dirty pages, so the store refuses further
    appends instead of acknowledging data it cannot vouch for. Restart the agent once the disk
    problem (full, read-only, I/O errors) is fixed; recovery keeps every record that reached disk.
    (A failed *write* is survived instead: see :mod:`meshmon.store.outage`.)
    """


class RecordDropped(StoreError):
    """The disk refuses writes and the outage buffer is full: the record was not stored.

    It got no seq and is counted in the store's ``lost`` counter (persisted). Records of the
    same batch that were kept have the seqs in :attr:`kept`.
    """

    def __init__(self, message: str, kept: range) -> None:
        super().__init__(message)
        self.kept = kept


class InvalidRecord(StoreError, ValueError):
    """An append argument cannot be stored (wrong type, too large, bad name)."""


class UnknownCursor(StoreError, KeyError):
    """No cursor has that name; create it with ``RingStore.cursor(name)`` first."""
