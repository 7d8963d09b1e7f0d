"""A transmit-limited broadcast queue (memberlist's ``TransmitLimitedQueue``).

Each entry is one encoded message keyed by what it is about (a member's name, a user key).
Putting news under an existing key replaces the older news and restarts its count. ``take``
hands out the entries sent the fewest times first (newest first among equals) that fit a byte
budget, and drops each entry once it has been sent ``limit`` times. Entries live in one dict per
transmit count, so taking and re-filing an entry costs O(1) and nothing is ever sorted.
"""

from __future__ import annotations

from operator import itemgetter

_SMALLEST = 12
"""No broadcast (suspect, dead, alive, user) encodes smaller than this."""
_MAX_MISSES = 32
"""Entries skipped for size before ``take`` gives up filling a datagram (bounds its cost)."""
_FILLED = itemgetter(1)  # of (count, bucket): most buckets are empty; skip them in C


class BroadcastQueue:
    """Queued gossip, bounded to ``max_size`` entries (the most-sent go first when full)."""

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._buckets: list[dict[str, bytes]] = [{}]
        self._where: dict[str, int] = {}
        self.dropped = 0
        """Entries pruned because the queue was full (no peers, long partition)."""

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def transmits(self, key: str) -> int | None:
        """How often ``key``'s entry was sent so far, or None if it is not queued."""
        return self._where.get(key)

    def peek(self, key: str) -> bytes | None:
        """The queued entry for ``key``, if any (not counted as sent)."""
        count = self._where.get(key)
        return None if count is None else self._buckets[count][key]

    def put(self, key: str, encoded: bytes) -> None:
        """Queue ``encoded`` under ``key``, replacing (invalidating) older news about it."""
        old = self._where.get(key)
        if old is not None:
            del self._buckets[old][key]
        self._buckets[0][key] = encoded
        self._where[key] = 0
        if len(self._where) > self._max_size:
            self._prune()

    def discard(self, key: str) -> None:
        """Forget ``key``'s entry, if any."""
        old = self._where.pop(key, None)
        if old is not None:
            del self._buckets[old][key]

    def _prune(self) -> None:
        for bucket in reversed(self._buckets):
            while bucket and len(self._where) > self._max_size:
                key = next(iter(bucket))  # the oldest among the most-sent
                del bucket[key]
                del self._where[key]
                self.dropped += 1
            if len(self._where) <= self._max_size:
                return

    def take(self, budget: int, limit: int) -> list[bytes]:
        """Entries that fit ``budget`` bytes together; each counts as sent once more.

        Args:
            budget: bytes available in the datagram.
            limit: retransmit limit; an entry sent this many times is dropped.
        """
        out: list[bytes] = []
        where = self._where
        if not where or budget <= 0:
            return out
        buckets = self._buckets
        if len(where) == 1:  # the usual case: one piece of news
            ((key, count),) = where.items()
            data = buckets[count][key]
            if budget >= _SMALLEST and len(data) <= budget:
                out.append(data)
                self._refile(key, data, count, limit)
            return out
        moved: list[tuple[str, bytes, int]] = []
        misses = 0  # stop scanning once many entries in a row did not fit the leftover bytes
        unseen = len(where)  # entries in the counts not scanned yet
        for count, bucket in filter(_FILLED, enumerate(buckets)):
            if budget < _SMALLEST or misses > _MAX_MISSES or not unseen:
                break
            unseen -= len(bucket)
            for key, data in reversed(bucket.items()):
                size = len(data)
                if size <= budget:
                    out.append(data)
                    budget -= size
                    moved.append((key, data, count))
                    if budget < _SMALLEST:
                        break
                else:
                    misses += 1
                    if misses > _MAX_MISSES:
                        break
        for key, data, count in moved:
            self._refile(key, data, count, limit)
        return out

    def _refile(self, key: str, data: bytes, count: int, limit: int) -> None:
        """``key``'s entry was sent once more: file it under ``count + 1``, or drop it."""
        buckets = self._buckets
        del buckets[count][key]
        if count + 1 >= limit:
            del self._where[key]
            return
        if count + 1 == len(buckets):
            buckets.append({})
        buckets[count + 1][key] = data
        self._where[key] = count + 1
