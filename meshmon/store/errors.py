"""Errors raised by the ring store; each means one thing and says what to do."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every ring-store error."""


class StoreLocked(StoreError):
    """Another process holds the store directory."""


class StoreClosed(StoreError):
    """The store was closed by this process; open it again to use it."""


class StoreFailed(StoreError):
    """A write or fsync failed; nothing appended since is known to be durable.

    After a failed fsync the kernel may have dropped dirty pages, so the store refuses further
    appends instead of acknowledging data it cannot vouch for. Restart the agent once the disk
    problem (full, read-only, I/O errors) is fixed; recovery keeps every record that reached disk.
    """


class InvalidRecord(StoreError, ValueError):
    """An append argument cannot be stored (wrong type, too large, bad name)."""


class UnknownCursor(StoreError, KeyError):
    """No cursor has that name; create it with ``RingStore.cursor(name)`` first."""
