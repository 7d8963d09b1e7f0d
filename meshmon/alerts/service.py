"""The alerting driver: feeds the cores, gossips signed digests, delivers notifications (trio).

Theory of operation
-------------------
Once a second the service steps this prober's :class:`~meshmon.alerts.evaluate.Evaluator`,
publishes its :class:`~meshmon.alerts.quorum.Digest` (plus the incidents it notifies) as the
membership layer's application data under ``alerts/<node>`` when it changed (and every
``REFRESH`` while it says something), decides the series worth deciding by quorum of the
probers placement assigns, and lets the :class:`~meshmon.alerts.incidents.IncidentBook` say
what to notify. Notifications go through the :class:`~meshmon.alerts.notify.Outbox`; each
incident event is also appended to the ring store (check ``_alerts``) for history and sync.

A digest is the prober's own statement: its body is signed with the prober's certified key and
the membership layer keeps or passes on a digest only after that signature verifies against the
certificate of the member named in the key (``user_filter``). Incidents are taken only from the
digest of the node that notifies them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Protocol

import cbor2
import trio

from meshmon.alerts.evaluate import Evaluator, EvaluatorConfig, Observation, SeriesKey
from meshmon.alerts.incidents import Incident, IncidentBook, Notification
from meshmon.alerts.notify import (
    AlertmanagerConfig,
    DeliveryError,
    Outbox,
    Pending,
    deliver,
    receiver_name,
)
from meshmon.alerts.quorum import Digest, VerdictBoard
from meshmon.logs import RateLimitedLog
from meshmon.membership import NodeMeta
from meshmon.wire.ingest import INCIDENT_CHECK

log = logging.getLogger("meshmon.alerts")

KEY_PREFIX = "alerts/"
STORE_CHECK = INCIDENT_CHECK
"""The ring store's reserved check name for incident history (synced to the aggregator)."""
TICK = 1.0
REFRESH = 20.0
"""A digest that lists something is re-published this often; receivers expire it after
``VerdictBoard.ttl`` (60 s) without news, and forget it at once when its prober leaves."""
MAX_DELIVERIES = 8
"""Notifications in flight at once."""


class AlertHost(Protocol):
    """What the service needs from the agent."""

    name: str

    def publish(self, key: str, version: int, payload: bytes) -> None: ...

    def member_meta(self, name: str) -> NodeMeta | None:
        """A live member's metadata (None if unknown, dead or left)."""
        ...

    def owners(self, check: str, target: str) -> tuple[str, ...]:
        """The k probers of a target, first owner first."""
        ...

    def sign(self, data: bytes) -> bytes: ...

    def verify(self, meta: NodeMeta, data: bytes, sig: bytes) -> str | None: ...

    async def record(self, ts: float, target: str, payload: Any) -> None:
        """Append incident history to the ring store."""
        ...


# --- digest wire form -----------------------------------------------------------------------


def encode_digest(d: Digest, incidents: Sequence[Incident]) -> bytes:
    """The unsigned body of a digest."""
    return bytes(cbor2.dumps([
        d.prober, d.version, d.impaired, [[*k, since] for k, since in d.failing], d.omitted,
        [[i.id, i.kind, *i.key, i.opened_at, i.notifier, i.version, i.resolved_at,
          i.firing_sent, i.resolved_sent, list(i.probers)] for i in incidents],
    ]))  # fmt: skip


def decode_digest(body: bytes) -> tuple[Digest, list[Incident]]:
    """Parse a digest body.

    Raises:
        ValueError: not a digest.
    """
    try:
        prober, version, impaired, failing, omitted, incs = cbor2.loads(body)
        digest = Digest(str(prober), int(version), bool(impaired),
                        tuple(((str(r), str(c), str(t)), float(s)) for r, c, t, s in failing),
                        int(omitted))  # fmt: skip
        incidents = [
            Incident(str(i), kind, (str(r), str(c), str(t)), float(op), str(n), int(v),
                     None if res is None else float(res), bool(fs), bool(rs),
                     tuple(str(p) for p in probers))
            for i, kind, r, c, t, op, n, v, res, fs, rs, probers in incs
        ]  # fmt: skip
    except (ValueError, TypeError, cbor2.CBORDecodeError) as exc:
        raise ValueError(f"not an alert digest: {exc}") from None
    if any(i.kind not in ("target", "vantage") for i in incidents):
        raise ValueError("not an alert digest: unknown incident kind")
    return digest, incidents


def incident_json(inc: Incident, now: float) -> dict[str, Any]:
    """An incident as the control API shows it."""
    rule, check, target = inc.key
    out = asdict(inc)
    out.update(rule=rule if inc.kind == "target" else "vantage-impaired", check=check,
               target=target, duration_s=round((inc.resolved_at or now) - inc.opened_at, 1))
    del out["key"]
    return out


class AlertService:
    """Runs alerting for one agent."""

    def __init__(self, config: Any, host: AlertHost) -> None:
        self.config = config  # meshmon.config.AlertsConfig
        self.host = host
        self.me = host.name
        self.evaluator = Evaluator(config.rules, EvaluatorConfig(
            impaired_fraction=config.impaired_fraction,
            impaired_min_targets=config.impaired_min_targets))  # fmt: skip
        self.board = VerdictBoard()
        self.book = IncidentBook(self.me)
        self.receivers = config.receivers
        self.outbox = Outbox(len(self.receivers), max_backoff=config.max_backoff)
        self._rules = {r.name: r for r in config.rules}
        self._version = 0
        self._published: tuple[Any, ...] | None = None
        self._published_at = 0.0
        self._last_am_repeat = 0.0
        self._in_flight: set[tuple[int, str, str]] = set()
        self._wake = trio.Event()
        self.delivery_errors = 0
        self.last_error = ""
        self.refused_digests = 0
        self._bad = RateLimitedLog(log, 10.0)

    @property
    def active(self) -> bool:
        """Whether there is anything to evaluate (no rules: the results path skips us)."""
        return bool(self.config.enabled and self.config.rules)

    # --- input ----------------------------------------------------------------------------

    def observe(self, obs: Observation) -> None:
        """A result this prober took (not degraded)."""
        self.evaluator.observe(obs)

    def accept(self, key: str, version: int, payload: bytes) -> bool:
        """The membership layer's filter: keep a digest only if its prober signed it."""
        if not key.startswith(KEY_PREFIX):
            return True
        prober = key[len(KEY_PREFIX):]
        meta = self.host.member_meta(prober)
        reason = "unknown-member" if meta is None else None
        try:
            body, sig = cbor2.loads(payload)
            digest, _ = decode_digest(body)
        except (ValueError, TypeError, cbor2.CBORDecodeError):
            reason = "malformed"
        else:
            if digest.prober != prober or digest.version != version:
                reason = "name-mismatch"
            elif meta is not None:
                reason = self.host.verify(meta, body, sig)
        if reason is not None:
            self.refused_digests += 1
            # a member whose announcement has not reached us yet is the rule while a mesh
            # starts (its digest comes again): counted, not a warning
            level = logging.INFO if reason == "unknown-member" else logging.WARNING
            self._bad.log(level, f"digest-{reason}", "refused alert digest %s v%d: %s",
                          key, version, reason)  # fmt: skip
            return False
        return True

    def received(self, key: str, payload: bytes) -> None:
        """A digest the filter accepted arrived."""
        try:
            body, _ = cbor2.loads(payload)
            digest, incidents = decode_digest(body)
        except (ValueError, TypeError, cbor2.CBORDecodeError):
            return
        if self.board.update(digest, time.time()):
            self.book.merge(i for i in incidents if i.notifier == digest.prober)
            for inc in incidents:  # somebody else took over: stop delivering it ourselves
                if inc.notifier != self.me and inc.kind == "target":
                    held = self.book.incidents.get(inc.id)
                    if held is not None and held.notifier != self.me:
                        self.outbox.drop_incident(inc.id)
            self._wake.set()

    # --- running --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Step once a second (sooner when a digest or a delivery changes something)."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            limiter = trio.CapacityLimiter(MAX_DELIVERIES)
            while True:
                await self.step(time.time(), nursery, limiter)
                with trio.move_on_after(TICK):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def step(self, now: float, nursery: trio.Nursery,
                   limiter: trio.CapacityLimiter) -> None:  # fmt: skip
        """One round: evaluate, publish, decide, notify."""
        notes: list[Notification] = []
        changes, vantage = self.evaluator.step(now)
        for c in changes:
            if c.new in ("firing", "ok") and c.old in ("pending", "resolving"):
                log.info("alert %s on %s (%s): this prober says %s (value %s)", c.key[0],
                         c.key[2], c.key[1], "failing" if c.new == "firing" else "ok",
                         "-" if c.value is None else f"{c.value:g}")  # fmt: skip
        if vantage is not None:
            log.warning("this prober %s impaired: %d of %d targets failing at once",
                        "is" if vantage.impaired else "is no longer", vantage.breaching,
                        vantage.targets)  # fmt: skip
            notes += self.book.step_vantage(now, vantage.impaired, vantage.at)
        for prober in [d.prober for d in self.board.digests(now)]:
            if prober != self.me and self.host.member_meta(prober) is None:
                self.board.forget(prober)
        self._publish(now)
        decisions = {}
        open_keys = {i.key for i in self.book.firing() if i.kind == "target"}
        for key in self.board.failing_keys(now) | open_keys:
            probers = self.host.owners(key[1], key[2])
            decisions[key] = self.board.decide(key, probers, now, self.config.quorum)
        notes += self.book.step_targets(now, decisions, owns=self._owns)
        for note in notes:
            await self._note(note, now)
        if notes:
            self._publish(now)
        self._repeat_to_alertmanager(now, nursery, limiter)
        for p in self.outbox.due(now):
            flight = (p.receiver, p.note.incident.id, p.note.event)
            if flight not in self._in_flight:
                self._in_flight.add(flight)
                nursery.start_soon(self._deliver, p, flight, limiter)

    def _owns(self, key: SeriesKey) -> bool:
        owners = self.host.owners(key[1], key[2])
        return bool(owners) and owners[0] == self.me

    async def _note(self, note: Notification, now: float) -> None:
        inc = note.incident
        log.warning("incident %s %s: %s", inc.id, note.event, _describe(inc))
        try:
            await self.host.record(now, inc.key[2], {"event": note.event,
                                                      **incident_json(inc, now)})  # fmt: skip
        except Exception as exc:  # history is best effort; notifying matters more
            log.warning("cannot record incident %s in the store: %s", inc.id, exc)
        if self._silenced(inc, now) or not self.receivers:
            self.book.delivered(inc.id, note.event)  # nobody else must say it either
            return
        self.outbox.add(note, now)

    def _silenced(self, inc: Incident, now: float) -> bool:
        import datetime as dt

        for s in self.config.silences:
            if not s.matches(inc.key[0] if inc.kind == "target" else "vantage-impaired",
                             inc.key[2]):
                continue
            if not s.until:
                return True
            try:
                until = dt.datetime.fromisoformat(s.until).timestamp()
            except ValueError:
                continue
            if now < until:
                return True
        return False

    def _severity(self, inc: Incident) -> tuple[str, dict[str, str]]:
        rule = self._rules.get(inc.key[0]) if inc.kind == "target" else None
        return (rule.severity, dict(rule.labels)) if rule else ("warning", {})

    async def _deliver(self, p: Pending, flight: tuple[int, str, str],
                       limiter: trio.CapacityLimiter) -> None:  # fmt: skip
        receiver = self.receivers[p.receiver]
        severity, labels = self._severity(p.note.incident)
        try:
            async with limiter:
                await deliver(receiver, p.note, severity, labels, time.time())
        except DeliveryError as exc:
            delay = self.outbox.failed(p, time.time(), str(exc))
            self.delivery_errors += 1
            self.last_error = f"{receiver_name(receiver)}: {exc}"
            self._bad.warning(f"deliver-{p.receiver}", "cannot notify %s (incident %s %s): %s; "
                              "retrying in %.0fs", receiver_name(receiver), p.note.incident.id,
                              p.note.event, exc, delay)  # fmt: skip
        else:
            if p in self.outbox.queue and self.outbox.succeeded(p):
                self.book.delivered(p.note.incident.id, p.note.event)
                self._published = None  # gossip the delivery at once
            self._wake.set()
        finally:
            self._in_flight.discard(flight)

    def _repeat_to_alertmanager(self, now: float, nursery: trio.Nursery,
                                limiter: trio.CapacityLimiter) -> None:  # fmt: skip
        if now - self._last_am_repeat < self.config.alertmanager_repeat:
            return
        self._last_am_repeat = now
        for inc in self.book.firing():
            if inc.notifier != self.me or not inc.firing_sent or self._silenced(inc, now):
                continue
            for receiver in self.receivers:
                if isinstance(receiver, AlertmanagerConfig):
                    nursery.start_soon(self._repeat_one, receiver, inc, limiter)

    async def _repeat_one(self, receiver: AlertmanagerConfig, inc: Incident,
                          limiter: trio.CapacityLimiter) -> None:  # fmt: skip
        severity, labels = self._severity(inc)
        try:
            async with limiter:
                await deliver(receiver, Notification("firing", inc), severity, labels,
                              time.time())  # fmt: skip
        except DeliveryError as exc:
            self._bad.warning("am-repeat", "cannot refresh alert at %s: %s", receiver.url, exc)

    def _publish(self, now: float) -> None:
        digest_state = (self.evaluator.impaired, tuple(sorted(self.evaluator.failing().items())),
                        tuple((i.id, i.version) for i in self.book.shared()))  # fmt: skip
        says_something = bool(digest_state[1] or digest_state[2] or digest_state[0])
        stale = says_something and now - self._published_at >= REFRESH
        if digest_state == self._published and not stale:
            return
        self._version = max(self._version + 1, int(now * 1000))
        digest = Digest.build(self.me, self._version, self.evaluator.impaired,
                              self.evaluator.failing())  # fmt: skip
        self.board.update(digest, now)
        body = encode_digest(digest, self.book.shared())
        self.host.publish(KEY_PREFIX + self.me, self._version,
                          bytes(cbor2.dumps([body, self.host.sign(body)])))  # fmt: skip
        self._published, self._published_at = digest_state, now

    # --- views ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For the control API and ``meshmon alerts``."""
        now = time.time()
        return {
            "enabled": self.config.enabled, "rules": [r.name for r in self.config.rules],
            "impaired": self.evaluator.impaired,
            "impaired_probers": self.board.impaired(now),
            "failing_here": [{"rule": k[0], "check": k[1], "target": k[2], "since": since}
                             for k, since in sorted(self.evaluator.failing().items())],
            "firing": [incident_json(i, now) for i in self.book.firing()],
            "recent": [incident_json(i, now) for i in self.book.recent()],
            "receivers": [receiver_name(r) for r in self.receivers],
            "pending_deliveries": len(self.outbox.queue),
            "delivery_errors": self.delivery_errors, "last_error": self.last_error,
            "refused_digests": self.refused_digests,
        }  # fmt: skip


def _describe(inc: Incident) -> str:
    rule, check, target = inc.key
    if inc.kind == "vantage":
        return f"prober {target} impaired"
    return f"{rule} on {target} ({check}), probers {', '.join(inc.probers) or '-'}"

