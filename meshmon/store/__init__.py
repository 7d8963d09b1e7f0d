"""The local ring store of results: crash-safe, bounded, indexed in memory.

Synchronous core: :class:`RingStore`. Trio wrapper for the agent: :func:`open_store` /
:class:`AsyncRingStore`.
"""

from meshmon.store.aio import AsyncRingStore, open_store
from meshmon.store.columns import StoredColumns
from meshmon.store.errors import (
    InvalidRecord,
    RecordDropped,
    StoreClosed,
    StoreError,
    StoreFailed,
    StoreLocked,
    UnknownCursor,
)
from meshmon.store.intake import RecordIn
from meshmon.store.records import CursorInfo, Record, RecoveryInfo, StoreStats
from meshmon.store.ring import RingStore

__all__ = [
    "AsyncRingStore",
    "CursorInfo",
    "InvalidRecord",
    "Record",
    "RecordDropped",
    "RecordIn",
    "RecoveryInfo",
    "RingStore",
    "StoreClosed",
    "StoreError",
    "StoreFailed",
    "StoreLocked",
    "StoreStats",
    "StoredColumns",
    "UnknownCursor",
    "open_store",
]
