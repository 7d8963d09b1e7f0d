"""Surviving a disk that refuses writes: buffer in memory, retry with backoff, resume in order.

Theory of operation
-------------------
When a write to the active segment fails (``ENOSPC``, ``EIO``, ``EROFS``...), the store cuts
the segment back to its last whole record and an outage begins. During an outage appends are
still accepted, into a bounded in-memory buffer. The buffer always starts at the store's next
on-disk seq, so each buffered record is given the seq it will have on disk: seqs stay
contiguous and nothing already handed out is renumbered. An append whose retry is due first
tries to write the buffer (the delay doubles from ``RETRY_FIRST`` up to ``RETRY_MAX``); once
all of it is written the outage ends and appends go straight to disk again.

When the buffer is full the *newest* record is dropped: it gets no seq, the append raises
:class:`~meshmon.store.errors.RecordDropped`, and it is counted in ``lost``. Dropping an older,
buffered record instead would break a seq already returned to its appender.

Buffered records live in memory only. The outage (its first seq and how many records are
pending) is saved to the health file (:mod:`meshmon.store.health`) when it starts and at most
once a second while records are buffered. If the agent dies during an outage, the next open
counts the pending records as lost and skips their seqs, so no seq is given out twice. A clean
stop that finds the disk still refusing does the same (:meth:`Outages.abandon`).

The log says it once when an outage starts (with the reason and what to do), once when the
buffer first overflows, every ``REMINDER`` seconds while it lasts, and once when it ends.
"""

from __future__ import annotations

import errno
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshmon.store.health import HealthFile

log = logging.getLogger("meshmon.store")

RETRY_FIRST = 0.5
"""Seconds before the first retry: a brief hiccup costs little."""
RETRY_MAX = 15.0
"""Longest wait between retries: recovery is noticed within 15 s once space returns."""
REMINDER = 60.0
"""Seconds between log lines while an outage lasts."""
SAVE_EVERY = 1.0
"""Most seconds of buffered records whose count a crash during an outage can miss; bounds the
health file's fsyncs to one a second."""
RESUME_CHUNK = 1000
"""Buffered records written per step when an outage ends (~0.3 MB, a few ms)."""
RECORD_OVERHEAD = 120
"""Bytes charged per buffered record beyond its payload and names (the Python objects)."""

Buffered = tuple[float, str, str, bytes, "tuple[int, float] | None"]
"""(ts, check, target, payload, summary): as ``append_batch`` took it, the payload encoded."""
"""A buffered record: (ts, check, target, CBOR payload)."""


def retry_delay(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (0 is the first) of a failing disk."""
    return min(RETRY_MAX, RETRY_FIRST * 2.0 ** min(attempt, 30))


def advice(reason: str, directory: Path) -> str:
    """What the operator should do about a write that failed with ``reason`` (an OSError's
    text, ``[Errno 28] No space left on device``)."""
    code = int(m.group(1)) if (m := re.match(r"\[Errno (\d+)\]", reason)) else None
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"free space on the filesystem of {directory} (or raise its quota)"
    if code == errno.EROFS:
        return f"the filesystem of {directory} is read-only: repair it and remount it read-write"
    if code == errno.EIO:
        return f"the disk under {directory} reports I/O errors: check dmesg and the disk"
    return f"check {directory} (permissions, mount, disk)"


@dataclass
class Outage:
    """One disk outage in progress."""

    since: float
    """Wall-clock time of the first failed write."""
    reason: str
    first_seq: int
    """Seq of the first buffered record (the store's next on-disk seq when it started)."""
    next_retry: float
    """Monotonic time of the next write attempt."""
    reminded_at: float
    saved_at: float = 0.0
    attempts: int = 0
    buffer: list[Buffered] = field(default_factory=list)
    buffered_bytes: int = 0
    buffered: int = 0
    """Records accepted into the buffer during this outage."""
    written: int = 0
    """Buffered records written to disk so far."""
    lost: int = 0
    """Records dropped because the buffer was full."""


class Outages:
    """A store's outage state, its loss counter and the reports kept in the health file.

    Args:
        directory: the store directory (for messages and the health file).
        limit: bytes the buffer may hold (``store.buffer_bytes``).
        clock: monotonic seconds (injectable so tests need not wait for retries).
    """

    def __init__(
        self, directory: Path, limit: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.directory = directory
        self.limit = limit
        self.clock = clock
        self.health = HealthFile(directory)
        data = self.health.data
        self.lost = int(data.get("lost", 0))
        """Records ever dropped because the disk failed (persisted)."""
        self.last: dict[str, Any] | None = data.get("last_outage")
        self.recovery: dict[str, Any] | None = data.get("recovery")
        self.seq_floor = int(data.get("seq_floor", 0))
        """Seqs below this were given to buffered records that never reached disk."""
        self.current: Outage | None = None
        self._crashed: dict[str, Any] | None = data.get("outage")

    # --- opening -------------------------------------------------------------------------

    def reconcile(self, next_seq: int) -> int:
        """After recovery: count what a crash during an outage lost; return the next seq,
        moved past every seq given to a buffered record that never reached disk."""
        crashed, self._crashed = self._crashed, None
        if crashed is not None:
            end = int(crashed["first_seq"]) + int(crashed["pending"])
            missing = max(0, end - next_seq)
            self.lost += missing
            self.seq_floor = max(self.seq_floor, end)
            self.last = {**crashed, "recovered_at": None, "lost_in_crash": missing}
            log.error("store %s: the agent stopped during a disk outage (since %s, %s); %d "
                      "buffered results were lost (at least; seqs %d..%d skipped); total lost %d",
                      self.directory, _clock(crashed["since"]), crashed["reason"], missing,
                      next_seq, end - 1, self.lost)  # fmt: skip
            self.save()
        return max(next_seq, self.seq_floor)

    def note_recovery(self, report: dict[str, Any]) -> None:
        """Keep the report of a recovery that found damage."""
        self.recovery = report
        self.save()

    # --- during an outage ----------------------------------------------------------------

    @property
    def active(self) -> bool:
        """An outage is in progress."""
        return self.current is not None

    @property
    def pending(self) -> int:
        """Records in the buffer."""
        return len(self.current.buffer) if self.current is not None else 0

    def begin(self, exc: BaseException, first_seq: int) -> None:
        """A write failed: start an outage (no-op if one is in progress)."""
        if self.current is not None:
            return
        now = self.clock()
        self.current = Outage(time.time(), str(exc), first_seq, now + retry_delay(0), now)
        log.error("store %s: writing failed: %s. Results are kept in memory (up to %d bytes) "
                  "and written when the disk accepts them again; retrying with backoff. To "
                  "fix: %s", self.directory, exc, self.limit,
                  advice(str(exc), self.directory))  # fmt: skip
        self.save()

    def offer(self, records: Sequence[Buffered]) -> int:
        """Buffer records in order until one does not fit; return how many were taken (the
        rest are counted as lost)."""
        o = self.current
        assert o is not None
        taken = 0
        for rec in records:
            size = len(rec[3]) + len(rec[1]) + len(rec[2]) + RECORD_OVERHEAD
            if o.buffered_bytes + size > self.limit:
                break
            o.buffer.append(rec)
            o.buffered_bytes += size
            taken += 1
        o.buffered += taken
        dropped = len(records) - taken
        if dropped:
            if not o.lost:
                log.error("store %s: the outage buffer is full (%d results, %d bytes): new "
                          "results are dropped and counted as lost until the disk accepts "
                          "writes; %s", self.directory, len(o.buffer), o.buffered_bytes,
                          advice(o.reason, self.directory))  # fmt: skip
            o.lost += dropped
            self.lost += dropped
        if self.clock() - o.saved_at >= SAVE_EVERY:  # so that a crash now loses no count
            self.save()
        if self.clock() - o.reminded_at >= REMINDER:
            o.reminded_at = self.clock()
            log.warning("store %s: still failing since %s (%s): %d results buffered, %d lost",
                        self.directory, _clock(o.since), o.reason, len(o.buffer),
                        o.lost)  # fmt: skip
        return taken

    def due(self) -> bool:
        """A retry is due."""
        return self.current is not None and self.clock() >= self.current.next_retry

    def retry_failed(self, exc: BaseException) -> None:
        """A retry failed: schedule the next one."""
        o = self.current
        assert o is not None
        o.attempts += 1
        o.reason = str(exc)
        o.next_retry = self.clock() + retry_delay(o.attempts)

    def written(self, n: int) -> None:
        """The first ``n`` buffered records reached disk."""
        o = self.current
        assert o is not None
        for rec in o.buffer[:n]:
            o.buffered_bytes -= len(rec[3]) + len(rec[1]) + len(rec[2]) + RECORD_OVERHEAD
        del o.buffer[:n]
        o.first_seq += n
        o.written += n

    def resume_step(self, write: Callable[[list[Buffered]], int]) -> bool | None:
        """Hand up to ``RESUME_CHUNK`` buffered records to ``write`` (which returns how many
        reached the disk): ``True`` if that ended the outage, ``False`` if the disk refused,
        ``None`` if more remain."""
        o = self.current
        assert o is not None
        chunk = o.buffer[:RESUME_CHUNK]
        if chunk:
            n = write(chunk)
            self.written(n)
            if n < len(chunk):
                return False
            if o.buffer:
                return None
        self.end()
        return True

    def end(self) -> None:
        """The buffer is on disk: the outage is over."""
        o = self.current
        assert o is not None and not o.buffer
        self.current = None
        now = time.time()
        self.last = {"since": o.since, "reason": o.reason, "recovered_at": now,
                     "buffered": o.buffered, "written": o.written, "lost": o.lost}  # fmt: skip
        log.warning("store %s: writes recovered after %.1fs of failure (%s): %d results "
                    "buffered, %d written, %d lost (total lost %d)", self.directory,
                    now - o.since, o.reason, o.buffered, o.written, o.lost, self.lost)  # fmt: skip
        self.save()

    def abandon(self) -> None:
        """Closing during an outage: what is still buffered is lost; say so and count it."""
        o = self.current
        if o is None:
            return
        n = len(o.buffer)
        o.lost += n
        self.lost += n
        self.seq_floor = max(self.seq_floor, o.first_seq + n)
        log.error("store %s: closing while writes still fail (%s): %d buffered results are "
                  "lost (total lost %d); %s", self.directory, o.reason, n, self.lost,
                  advice(o.reason, self.directory))  # fmt: skip
        self.current = None
        self.last = {"since": o.since, "reason": o.reason, "recovered_at": None,
                     "buffered": o.buffered, "written": o.written, "lost": o.lost}  # fmt: skip
        self.save()

    # --- state ---------------------------------------------------------------------------

    def save(self) -> None:
        """Persist counters and reports (best effort: a refusing disk is retried next time)."""
        data: dict[str, Any] = {"version": 1, "lost": self.lost, "seq_floor": self.seq_floor,
                                "last_outage": self.last, "recovery": self.recovery}  # fmt: skip
        o = self.current
        if o is not None:
            o.saved_at = self.clock()
            data["outage"] = {"since": o.since, "reason": o.reason[:300],
                              "first_seq": o.first_seq, "pending": len(o.buffer)}  # fmt: skip
        self.health.save(data)

    def state(self, failed: BaseException | None = None) -> dict[str, Any]:
        """For stats: ``state`` (ok, failing, or failed after an fsync error), since, reason,
        advice, buffered, lost, last outage, last recovery report."""
        o = self.current
        out: dict[str, Any] = {
            "state": "failing" if o else "ok",
            "lost": self.lost,
            "last_outage": self.last,
            "recovery_report": self.recovery,
        }
        if failed is not None:
            return out | {
                "state": "failed",
                "reason": str(failed),
                "buffered": 0,
                "buffered_bytes": 0,
                "advice": "fix the disk, then restart the "
                "agent (after a failed fsync no write can be vouched for)",
            }
        if o is not None:
            out.update(since=o.since, reason=o.reason, buffered=len(o.buffer),
                       buffered_bytes=o.buffered_bytes,
                       written=o.written, lost_now=o.lost, attempts=o.attempts,
                       advice=advice(o.reason, self.directory))  # fmt: skip
        else:
            out.update(buffered=0, buffered_bytes=0)
        return out


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
