"""The uploader: hands the ring store's results to an aggregator, lazily and exactly once.

Theory of operation
-------------------
A named store cursor (``aggregator``) marks the next record to send; everything before it is
known to be committed at the aggregator. The uploader waits until ``batch_size`` records are
pending or the oldest has waited ``max_delay``, reads at most one batch from the cursor (in a
worker thread, with its encoding), and POSTs it (:mod:`meshmon.wire.ingest`). Memory is bounded
by one batch whatever the backlog: after days offline it works through the ring batch by batch.

Records travel as the store's own compressed frames (protocol version 3,
:mod:`meshmon.wire.frames`) where every record of the run has a summary (what the agent's ping
path appends): the uploader inflates only the frames' meta, for the series they name, and the
aggregator reads the frames. Otherwise (other kinds, records from before summaries, a disk
outage's records) they travel as columns (version 2, :mod:`meshmon.wire.columns`), read from the
store as columns and each result's summary derived on the way (:mod:`.build`): the
``encode_result`` bytes of each result (the agent stores them with a ``degraded`` flag, which
the protocol does not carry) and the kind, success, RTT, loss and error the aggregator stores
beside them. An aggregator that answers it does not read version 3 gets version 2 from then on.
The batch says what the agent believes the aggregator holds (``after``); records between that
and the batch's first that the ring overwrote meanwhile are declared (``skipped_before``), and
the store cursor's loss counter goes with every batch (``lost_total``): losses are reported,
never hidden. They also show in ``meshmon status``.

The aggregator is authoritative about what it holds:

* 200 ``Ack(high_water)``: the cursor moves past ``high_water`` (in memory at once, on disk at
  the store's next fsync round or within ``CURSOR_SAVE_INTERVAL``; a crash before that only
  re-sends what the aggregator will ignore).
* 409 ``expected``: resume at ``expected``, forward (it has more: another agent process with
  this store uploaded it, or our cursor save was lost) or back (its database lost some: what the
  ring still holds is sent again, the rest declared).
* another 4xx: the batch or this agent is refused; logged (once per problem and quarter of an
  hour), the cursor stays, the next aggregator is tried, then backoff. (413, a batch too large
  for it, halves the batch instead.)
* 5xx, connection errors, timeouts, a server that is not an aggregator: next URL, then backoff.

Backoff is exponential with full jitter between ``backoff_min`` and ``backoff_max``, counted in
rounds over every URL and reset by the first success. URLs are tried in order (configured,
then learnt from gossip) and the one that works is kept (:class:`~.policy.UrlChooser`).

A batch retried after a lost acknowledgement carries the same records; the aggregator inserts
only those above its mark, so nothing is stored twice.
"""

from __future__ import annotations

import logging
import random
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate, repeat
from operator import add
from typing import Any

import trio

from meshmon import pki
from meshmon.config import SyncConfig
from meshmon.store import AsyncRingStore, StoredColumns
from meshmon.sync.build import RecordReader
from meshmon.sync.client import Acked, AggregatorClient, Conflict, Outcome, Refused, Unavailable
from meshmon.sync.policy import UrlChooser, backoff_delay, due_at, resync
from meshmon.wire import urls as wire_urls
from meshmon.wire.columns import ColumnBatch, encode_columns
from meshmon.wire.frames import FrameBatch, encode_frames
from meshmon.wire.ingest import MAX_BODY, MAX_RECORDS, MemberReport

log = logging.getLogger(__name__)

CURSOR = "aggregator"
"""The store cursor of the upload."""
CURSOR_SAVE_INTERVAL = 5.0
"""Seconds between durable cursor saves while acknowledgements come in; between them a commit
lives in memory and is saved at the store's next fsync round."""
READ_BYTES = 8 * 2**20
"""Most stored (compressed) bytes read for one batch."""
BODY_BUDGET = MAX_BODY // 2
"""Largest uncompressed batch the uploader builds (half what an aggregator accepts)."""
FRAME_BATCHES = 4
"""A batch of stored frames (version 3) carries up to this many times ``batch_size`` records
when they are pending (catching up): it is held compressed, and each request and transaction
costs the agent and the aggregator the same whatever its size (measured with
``benchmarks/ingest``: batches of 20,000 took ~1 µs a record less, end to end, than of 5,000)."""
IDLE_RECHECK = 30.0
"""Seconds between looks at the store while nothing is pending (new records wake it sooner)."""
FAIL_LOG_INTERVAL = 300.0
"""While uploads keep failing, one warning per this many seconds (the first at once)."""
REFUSED_LOG_INTERVAL = 900.0
"""The same refusal (4xx) is logged once per this many seconds."""
MAX_CONFLICTS = 3
"""409s in a row before the uploader stops retrying at once and backs off."""


class Uploader:
    """Uploads one store's records to the aggregator; run it in the agent's nursery.

    Args:
        store: the agent's ring store.
        identity: this node's credentials (its certificate is its identity at the aggregator).
        trust: the mesh CA and newest CRL (the aggregator's certificate is checked against it).
        config: the ``[sync]`` section.
        urls: the aggregator URLs to use now, in order of preference (configured, learnt).
        members: this agent's membership view, reported along with records when it changed.
        rng: randomness for the backoff jitter.
    """

    def __init__(
        self, store: AsyncRingStore, identity: pki.NodeIdentity, trust: pki.Trust,
        config: SyncConfig, urls: Callable[[], Sequence[str]],
        members: Callable[[], tuple[MemberReport, ...]] | None = None,
        rng: random.Random | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.identity = identity
        self.trust = trust
        self.config = config
        self.urls = urls
        self.members = members
        self.rng = rng or random.Random()
        self.chooser = UrlChooser()
        self.limit = config.batch_size
        """Most records per batch: ``batch_size``, halved by each 413 (payload too large)."""
        self.acked = 0
        """Every seq up to this one is committed at the aggregator, as far as we know."""
        self.state = "starting"
        self.aggregator = ""
        self.failures = 0
        """Failed rounds (over every URL) since the last success."""
        self.backoff = 0.0
        self.retry_at: float | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.batches = 0
        self.frame_batches = 0
        """Of ``batches``, those that went as stored frames (version 3)."""
        self.records = 0
        self.bytes = 0
        self.skipped = 0
        """Seqs declared overwritten (``skipped_before``) in acknowledged batches, this run."""
        self._reported: tuple[MemberReport, ...] | None = None
        self._oldest: tuple[int, float, float] | None = None
        """(seq, its timestamp, monotonic time it was first seen) of the oldest pending."""
        self._conflicts = 0
        self._saved_at = -CURSOR_SAVE_INTERVAL
        self.frames_by_url: dict[str, bool] = {}
        """Per URL: False once it answered that it does not read version 3 (stored frames)."""
        self._failing_since: float | None = None
        self._fail_logged = -FAIL_LOG_INTERVAL
        self._refusals: dict[str, float] = {}
        self._poke = trio.Event()
        self._changed = trio.Event()
        self._client = AggregatorClient(identity, trust, config.timeout)
        self._reader = RecordReader(identity.name)

    def wake(self) -> None:
        """The URLs may have changed (a member advertised one): look again."""
        self._poke.set()

    async def wait_changed(self) -> None:
        """Return at the next change of :meth:`status` (an upload acknowledged or failed, a
        resync, a backoff ended)."""
        await self._changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    # --- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Upload until cancelled."""
        info = self.store.cursor(CURSOR)
        self.acked = info.position - 1
        client = self._client
        log.info("sync: store %s, cursor at seq %d (%d records behind, %d lost so far); "
                 "aggregators: %s", self.store.store_id, info.position, info.behind, info.lost,
                 ", ".join(self.urls()) or "none known yet")  # fmt: skip
        task_status.started()
        try:
            while True:
                await self._wait_due()
                try:
                    await self._attempt(client)
                except Exception as exc:  # a bug or an unforeseen failure: never stop the agent
                    await self._unexpected(exc)
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()

    def _position(self) -> int:
        return self.store.core.cursors.get(CURSOR).position

    async def _wait_due(self) -> None:
        """Return when a batch should leave (and some aggregator URL is known)."""
        core = self.store.core
        while True:
            if not self.urls():
                self.state = "no-aggregator"
                await self._poke.wait()
                self._poke = trio.Event()
                continue
            position = self._position()
            durable = core.durable_seq
            pending = durable - position + 1
            now = trio.current_time()
            if pending <= 0:
                self.state = "idle"
                with trio.move_on_after(IDLE_RECHECK):
                    await self.store.wait_durable_past(durable)
                continue
            if pending >= self.limit:
                return  # a full batch waits: no need to read the oldest record's age
            due = due_at(pending, self.limit, self.config.max_delay, now,
                         *self._oldest_pending(position, now))  # fmt: skip
            if due is not None and due <= now:
                return
            self.state = "waiting"
            with trio.move_on_at(due if due is not None else now + IDLE_RECHECK):
                await self.store.wait_durable_past(position + self.limit - 2)

    def _oldest_pending(self, position: int, now: float) -> tuple[float, float]:
        """(first seen, age by its timestamp) of the oldest pending record."""
        if self._oldest is None or self._oldest[0] != position:
            found = self.store.core.read(position, limit=1, max_bytes=1)
            ts = found[0].ts if found else time.time()
            self._oldest = (position, ts, now)
        _, ts, seen = self._oldest
        return seen, time.time() - ts

    async def _attempt(self, client: AggregatorClient) -> None:
        """Send one batch to the current URL and act on the answer."""
        urls = tuple(self.urls())
        url = self.chooser.pick(urls)
        if url is None:
            return
        members = self.members() if self.members is not None else None
        if members is not None and members == self._reported:
            members = None
        built = await trio.to_thread.run_sync(self._build, members,
                                              self.frames_by_url.get(url, True))  # fmt: skip
        if built is None:  # the pending seqs are missing (a corrupt stretch): wait for more
            with trio.move_on_after(IDLE_RECHECK):
                await self.store.wait_durable_past(self.store.core.durable_seq)
            return
        batch, body, encoding = built
        self.state = "uploading"
        outcome = await client.post(wire_urls.ingest_url(url), body, encoding)
        if isinstance(outcome, Acked) and outcome.ack.high_water < batch.last:
            outcome = Conflict(outcome.ack.high_water + 1, "acknowledged only up to seq "
                               f"{outcome.ack.high_water} of a batch ending at {batch.last}")
        if isinstance(outcome, Acked):
            await self._acked(url, batch, outcome, len(body))
        elif isinstance(outcome, Conflict):
            await self._resync(url, outcome.expected)
            self._conflicts += 1
            if self._conflicts >= MAX_CONFLICTS:
                await self._failed(url, urls, f"the aggregator answered 409 {self._conflicts} "
                                   f"times in a row ({outcome.message})")  # fmt: skip
        else:
            if isinstance(outcome, Refused) and isinstance(batch, FrameBatch) \
                    and outcome.message.startswith("v: "):  # fmt: skip
                self.frames_by_url[url] = False  # an aggregator that reads versions 1 and 2
                log.warning("sync: %s does not read stored frames (%s); sending columns",
                            url, outcome.message)  # fmt: skip
                return
            if isinstance(outcome, Refused) and outcome.status == 413 and batch.count > 1:
                self.limit = max(1, batch.count // 2)  # too large for it: halve
                log.warning("sync: %s finds %d records too large a batch; sending at most %d",
                            url, batch.count, self.limit)  # fmt: skip
                return
            await self._failed(url, urls, _describe(outcome), outcome)

    def _build(self, members: tuple[MemberReport, ...] | None, frames: bool = True,
               ) -> tuple[ColumnBatch | FrameBatch, bytes, str | None] | None:  # fmt: skip
        """Read the next batch from the cursor and encode it (runs in a worker thread): the
        stored frames as they are where every record has a summary (version 3), else columns
        (version 2)."""
        core = self.store.core
        position = self._position()
        run = core.read_frames(position, min(MAX_RECORDS, self.limit * FRAME_BATCHES),
                               READ_BYTES) if frames else None  # fmt: skip
        if run is not None and not run.unsummarized:
            sent = FrameBatch(**self._header(run.first, run.last, members), run=run)
            return (sent, *encode_frames(sent))
        stored = core.read_columns(position, self.limit, READ_BYTES)
        if not stored.count:
            return None
        stored.truncate(_within_budget(stored))
        batch = ColumnBatch(  # valid by construction: the aggregator checks it anyway
            **self._header(stored.first, stored.last, members), **self._reader.columns(stored))
        body, encoding = encode_columns(batch)
        return batch, body, encoding

    def _header(self, first: int, last: int,
                members: tuple[MemberReport, ...] | None) -> dict[str, Any]:  # fmt: skip
        """The fields of a batch of records ``first .. last`` besides its records."""
        after = min(self.acked, first - 1)
        return {"agent": self.identity.name, "store": self.store.core.store_id, "after": after,
                "first": first, "last": last, "skipped_before": first - after - 1,
                "lost_total": self.store.core.cursors.get(CURSOR).lost, "sent_at": time.time(),
                "members": members}  # fmt: skip

    # --- outcomes ---------------------------------------------------------------------------

    async def _acked(self, url: str, batch: ColumnBatch | FrameBatch, outcome: Acked,
                     size: int) -> None:  # fmt: skip
        high = outcome.ack.high_water
        durable = self.store.core.durable_seq
        target = min(high, durable)
        if high > durable:
            log.warning("sync: %s holds seqs up to %d of store %s, beyond this store's newest "
                        "(%d): was the data dir copied or restored?", url, high,
                        self.store.store_id, durable)  # fmt: skip
        self.acked = target
        self.skipped += batch.skipped_before
        self.batches += 1
        self.frame_batches += isinstance(batch, FrameBatch)
        self.records += batch.count
        self.bytes += size
        if batch.members is not None:
            self._reported = batch.members
        self._succeeded(url, outcome.aggregator)
        now = trio.current_time()
        durable_save = now - self._saved_at >= CURSOR_SAVE_INTERVAL
        await self._commit(target, durable=durable_save, delivered_from=batch.first)
        if durable_save:
            self._saved_at = now
        self._notify()

    async def _commit(self, last_seq: int, **options: Any) -> None:
        """Move the cursor; a disk that refuses the cursor file is logged, not fatal (the
        position holds in memory and is saved at a later fsync round, or records are sent
        again after a restart, which the aggregator ignores)."""
        try:
            await self.store.commit_cursor(CURSOR, last_seq, **options)
        except OSError as exc:
            log.warning("sync: cursor %r not saved (%s); it is kept in memory", CURSOR, exc)

    def _succeeded(self, url: str, aggregator: str) -> None:
        if self._failing_since is not None or aggregator != self.aggregator:
            log.info("sync: uploading to %s (aggregator %s)%s", url, aggregator or "?",
                     f" again after {self.failures} failed round(s)" if self.failures
                     else "")  # fmt: skip
        self.aggregator = aggregator
        self.chooser.worked()
        self.failures = 0
        self.backoff = 0.0
        self.retry_at = None
        self._conflicts = 0
        self._failing_since = None
        self.last_success = time.time()

    async def _resync(self, url: str, expected: int) -> None:
        core = self.store.core
        plan = resync(expected, core.durable_seq, core.oldest_seq)
        if plan.beyond:
            log.warning("sync: %s holds seqs up to %d of store %s, beyond this store's newest "
                        "(%d): was the data dir copied or restored? Records up to there will "
                        "not be stored again", url, expected - 1, self.store.store_id,
                        core.durable_seq)  # fmt: skip
        before = self._position()
        await self._commit(plan.position - 1, rewind=True)
        log.info("sync: %s holds store %s up to seq %d; resuming at %d (was %d)%s", url,
                 self.store.store_id, expected - 1, plan.position, before,
                 f"; seqs {plan.acked + 1}-{plan.position - 1} are no longer in the ring and "
                 "will be declared lost" if plan.position > plan.acked + 1 else "")  # fmt: skip
        self.acked = plan.acked
        self._saved_at = trio.current_time()
        self._notify()

    async def _failed(self, url: str, urls: Sequence[str], message: str,
                      outcome: Outcome | None = None) -> None:  # fmt: skip
        now = time.time()
        self.last_error, self.last_error_at = f"{url}: {message}", now
        self._conflicts = 0
        self._log_failure(url, message, outcome)
        self._notify()
        if not self.chooser.failed(urls):
            return  # another URL to try at once
        self.failures += 1
        self.backoff = backoff_delay(self.failures, self.config.backoff_min,
                                     self.config.backoff_max, self.rng)  # fmt: skip
        self.retry_at = now + self.backoff
        self.state = "backoff"
        self._notify()
        await trio.sleep(self.backoff)
        self.retry_at = None
        self._notify()

    async def _unexpected(self, exc: Exception) -> None:
        mono = time.monotonic()
        if mono - self._refusals.get("unexpected", -REFUSED_LOG_INTERVAL) >= REFUSED_LOG_INTERVAL:
            self._refusals["unexpected"] = mono
            log.exception("sync: upload failed unexpectedly (%s); retrying with backoff", exc)
        self.last_error, self.last_error_at = f"unexpected: {exc!r}", time.time()
        self.failures += 1
        self.backoff = backoff_delay(self.failures, self.config.backoff_min,
                                     self.config.backoff_max, self.rng)  # fmt: skip
        self.state = "backoff"
        self._notify()
        await trio.sleep(self.backoff)

    def _log_failure(self, url: str, message: str, outcome: Outcome | None) -> None:
        mono = time.monotonic()
        if isinstance(outcome, Refused):
            key = f"{url} {outcome.status} {message}"
            if mono - self._refusals.get(key, -REFUSED_LOG_INTERVAL) >= REFUSED_LOG_INTERVAL:
                if len(self._refusals) > 100:
                    self._refusals.clear()
                self._refusals[key] = mono
                log.error("sync: %s refused the upload (HTTP %d): %s; the cursor stays at seq "
                          "%d, retrying with backoff", url, outcome.status, message,
                          self._position())  # fmt: skip
        elif self._failing_since is None or mono - self._fail_logged >= FAIL_LOG_INTERVAL:
            self._fail_logged = mono
            log.warning("sync: cannot upload to %s: %s; %s", url, message,
                        "results wait in the local store" if self._failing_since is None
                        else f"still failing after {self.failures} round(s)")  # fmt: skip
        else:
            log.debug("sync: upload to %s failed: %s", url, message)
        if self._failing_since is None:
            self._failing_since = mono

    # --- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The sync state for ``meshmon status`` (JSON-ready)."""
        core = self.store.core
        cursor = next((c for c in core.cursor_infos() if c.name == CURSOR), None)
        return {
            "state": self.state, "url": self.chooser.url, "aggregator": self.aggregator or None,
            "urls": list(self.urls()), "store": core.store_id,
            "cursor": cursor.position if cursor else None, "acked": self.acked,
            "behind": cursor.behind if cursor else 0, "lost": cursor.lost if cursor else 0,
            "skipped_declared": self.skipped,
            "batches": self.batches, "frame_batches": self.frame_batches,
            "records": self.records, "bytes": self.bytes,
            "last_success": self.last_success, "last_error": self.last_error,
            "last_error_at": self.last_error_at, "failures": self.failures,
            "backoff_s": round(self.backoff, 3) if self.retry_at is not None else 0.0,
            "retry_at": self.retry_at,
        }  # fmt: skip


def _describe(outcome: Outcome) -> str:
    if isinstance(outcome, Refused):
        return f"HTTP {outcome.status}: {outcome.message}"
    if isinstance(outcome, Unavailable):
        return outcome.message
    return repr(outcome)


def _within_budget(stored: StoredColumns) -> int:
    """How many of the ``stored`` records fit in one request body (at least one): each takes
    at most its stored payload and 24 bytes of packed columns (series and outcome tables
    aside, which hold at most a few hundred bytes a distinct value)."""
    sizes = accumulate(map(add, stored.plens, repeat(24)))
    return max(1, bisect_right(list(sizes), BODY_BUDGET))
