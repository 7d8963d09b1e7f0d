"""The agent's metrics: what its parts already count, read at scrape time.

:func:`capture` runs on the agent's loop and copies the counters the agent keeps anyway
(membership, transport, scheduler, alerts, sync, the probe series of
:mod:`meshmon.metrics.probes`); the :class:`_Agent` it returns makes the families in a worker
thread, where it also reads the store's counters (under the store's own mutex). Nothing here
runs per result. The README's "Metrics" table documents every family; keep them in step.
"""

from __future__ import annotations

import collections
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import Metric

from meshmon.membership import State
from meshmon.membership.auth import REASONS
from meshmon.metrics import loop
from meshmon.metrics.exposition import by_reason, counter, gauge, histogram
from meshmon.metrics.probes import ProbeSeries, Snapshot
from meshmon.metrics.text import probe_text
from meshmon.version import __version__

if TYPE_CHECKING:
    from meshmon.agent import Agent
    from meshmon.store import AsyncRingStore

_GOSSIP = ("datagrams_sent", "datagrams_received", "bytes_sent")
"""Core counters with families of their own; the others are membership events."""


@dataclass
class _Agent:
    """The numbers of one scrape (copied on the loop); :meth:`build` runs in a worker thread."""

    node: str
    tags: str
    cert_expiry: float
    crl_number: int | None
    checks: list[tuple[str, str, float]]
    assignments: int
    in_flight: int
    last_lag: float
    max_lag: float
    degraded_lag: float
    results_written: int
    sink_errors: int
    loop_counts: list[int]
    loop_total: float
    loop_max: float
    probes: Snapshot | None
    members: collections.Counter[str] | None
    mesh: dict[str, Any] | None
    transport: dict[str, dict[str, int]] | None
    queries: tuple[int, dict[str, int]] | None
    alerts: dict[str, Any] | None
    sync: dict[str, Any] | None
    store: AsyncRingStore | None

    def build(self) -> Iterator[Metric | str]:
        """Every family of the agent."""
        yield gauge("meshmon_build_info", "meshmon's version and the Python running it (1).",
                    labels=["version", "python"],
                    rows=[([__version__, platform.python_version()], 1)])  # fmt: skip
        yield gauge("meshmon_node_info", "This node's name and the tags its certificate grants.",
                    labels=["node", "tags"], rows=[([self.node, self.tags], 1)])  # fmt: skip
        yield gauge("meshmon_certificate_expiry_timestamp_seconds",
                    "When this node's certificate expires (Unix time).", self.cert_expiry)
        if self.crl_number is not None:
            yield gauge("meshmon_crl_number", "Number of the newest CRL this node holds.",
                        self.crl_number)  # fmt: skip
        yield from self._membership()
        yield from self._probing()
        yield from self._store()
        yield from self._sync()
        yield from self._alerts()
        yield histogram("meshmon_event_loop_lag_seconds",
                        "How late a task asking to wake each second ran: the agent's loop lag.",
                        [], loop.BOUNDS, [([], self.loop_counts, self.loop_total)])  # fmt: skip
        yield gauge("meshmon_event_loop_lag_max_seconds",
                    "Largest event-loop lag over the last minute.", self.loop_max)

    def _membership(self) -> Iterator[Metric]:
        if self.members is None or self.mesh is None:
            return
        yield gauge("meshmon_members", "Members this node knows, by state (itself included).",
                    labels=["state"], rows=[([s.name.lower()], self.members[s.name.lower()])
                                            for s in State])  # fmt: skip
        m = self.mesh
        yield gauge("meshmon_membership_awareness",
                    "Lifeguard's local health score: 0 is healthy; higher means this node "
                    "misses acks and slows its own suspicions.", m["awareness"])
        yield gauge("meshmon_gossip_queue_length", "Broadcasts waiting to be gossiped.",
                    m["queue"])  # fmt: skip
        stats = m["stats"]
        yield counter("meshmon_gossip_datagrams_sent_total", "Gossip datagrams sent.",
                      stats.get("datagrams_sent", 0))  # fmt: skip
        yield counter("meshmon_gossip_datagrams_received_total",
                      "Gossip datagrams received and opened.", stats.get("datagrams_received", 0))
        yield counter("meshmon_gossip_bytes_sent_total", "Gossip payload bytes sent.",
                      stats.get("bytes_sent", 0))  # fmt: skip
        events = {k: v for k, v in stats.items() if k not in _GOSSIP}
        yield by_reason("meshmon_membership_events_total",
                        "Membership protocol events (probes, probe_failed, suspected, "
                        "refutations, push_pull_merged...).", events,
                        ("probes", "probe_failed", "suspected", "refutations"), label="event")
        yield by_reason("meshmon_membership_refused_total",
                        "Self-statements of members refused (not proven by their certificate), "
                        "by reason.", m["refused"], REASONS)  # fmt: skip
        yield counter("meshmon_membership_stream_failures_total",
                      "Membership streams (push-pull, TCP ping, certificates) that failed.",
                      m["stream_failures"])  # fmt: skip
        if self.transport is not None:
            drops = {**self.transport["drops"], "malformed": m["malformed"]}
            yield by_reason("meshmon_datagrams_dropped_total",
                            "Datagrams dropped, by reason (unauthenticated, replayed, malformed, "
                            "queue overflow...).", drops)  # fmt: skip
            yield by_reason("meshmon_connections_refused_total",
                            "TCP connections turned away before or during TLS, by reason.",
                            self.transport["refused"])  # fmt: skip
        if self.queries is not None:
            yield counter("meshmon_queries_served_total",
                          "Mesh queries answered for peers.", self.queries[0])  # fmt: skip
            yield by_reason("meshmon_queries_refused_total",
                            "Mesh queries refused, by reason.", self.queries[1])  # fmt: skip

    def _probing(self) -> Iterator[Metric | str]:
        yield gauge("meshmon_checks", "Checks configured.", len(self.checks))
        yield gauge("meshmon_check_interval_seconds", "Each check's interval, by kind.",
                    labels=["check", "kind"],
                    rows=[([name, kind], interval) for name, kind, interval in self.checks])
        yield gauge("meshmon_probe_assignments", "Check x target pairs this agent probes.",
                    self.assignments)  # fmt: skip
        yield gauge("meshmon_probe_in_flight", "Probe tasks running now.", self.in_flight)
        yield gauge("meshmon_probe_lag_seconds",
                    "How late the scheduler's latest wake-up was (probes start this late).",
                    self.last_lag)  # fmt: skip
        yield gauge("meshmon_probe_lag_max_seconds",
                    "Worst scheduler lag since the agent started.", self.max_lag)
        yield gauge("meshmon_probe_degraded",
                    "1 while the scheduler lags more than it tolerates (results are marked "
                    "degraded).", int(self.last_lag > self.degraded_lag))  # fmt: skip
        if self.probes is not None:
            yield probe_text(self.probes)

    def _store(self) -> Iterator[Metric]:
        yield counter("meshmon_results_stored_total", "Results written to the store.",
                      self.results_written)  # fmt: skip
        yield counter("meshmon_store_write_errors_total",
                      "Results the store refused with an error (not stored).", self.sink_errors)
        if self.store is None:
            return
        stats = self.store.stats()  # its mutex: safe from this thread
        health = stats.health
        yield gauge("meshmon_store_writable", "1 while the store accepts writes (the disk does).",
                    int(health.get("state") == "ok"))  # fmt: skip
        yield gauge("meshmon_store_bytes", "Bytes the store's segments take on disk.", stats.bytes)
        yield gauge("meshmon_store_capacity_bytes", "The ring's capacity (store.max_bytes).",
                    stats.capacity_bytes)  # fmt: skip
        yield gauge("meshmon_store_records", "Records in the ring.", stats.records)
        yield gauge("meshmon_store_segments", "Segments in the ring.", stats.segments)
        yield gauge("meshmon_store_buffered_records",
                    "Results held in memory while the disk refuses writes.",
                    health.get("buffered", 0))  # fmt: skip
        yield counter("meshmon_store_records_lost_total",
                      "Results lost: overwritten by the ring before a cursor (the uploader) "
                      "read them, or refused by a failing disk with the buffer full.",
                      labels=["reason"], rows=[(["unsynced"], stats.lost_records),
                                               (["disk"], health.get("lost", 0))])  # fmt: skip
        yield counter("meshmon_store_records_overwritten_total",
                      "Records dropped with the oldest segment when the ring wrapped (read or "
                      "not).", stats.dropped_records)  # fmt: skip
        yield counter("meshmon_store_read_errors_total",
                      "Records that failed their checksum when read back.", stats.read_errors)

    def _sync(self) -> Iterator[Metric]:
        yield gauge("meshmon_sync_enabled", "1 when results are uploaded to an aggregator.",
                    int(self.sync is not None))  # fmt: skip
        s = self.sync
        if s is None:
            return
        behind = int(s.get("behind") or 0)
        yield gauge("meshmon_sync_pending_records", "Stored results not uploaded yet.", behind)
        lag = self._oldest_pending_age(s.get("cursor")) if behind else 0.0
        if lag is not None:
            yield gauge("meshmon_sync_lag_seconds",
                        "Age of the oldest stored result not uploaded yet (0 when none waits).",
                        lag)  # fmt: skip
        if s.get("last_success"):
            yield gauge("meshmon_sync_last_success_timestamp_seconds",
                        "When an upload last succeeded (Unix time).", s["last_success"])
        yield counter("meshmon_sync_uploaded_records_total", "Results the aggregator accepted.",
                      s.get("records", 0))  # fmt: skip
        yield counter("meshmon_sync_uploaded_batches_total", "Batches the aggregator accepted.",
                      s.get("batches", 0))  # fmt: skip
        yield gauge("meshmon_sync_consecutive_failures", "Upload rounds failed in a row.",
                    s.get("failures", 0))  # fmt: skip

    def _oldest_pending_age(self, cursor: int | None) -> float | None:
        """Seconds since the oldest record at or past the upload cursor was taken (one record
        read, under the store's mutex); None when it cannot be read now."""
        if cursor is None or self.store is None:
            return None
        try:
            found = self.store.core.read(cursor, limit=1, max_bytes=1)
        except Exception:  # a closing or failing store: no number rather than a wrong one
            return None
        return max(0.0, time.time() - found[0].ts) if found else 0.0

    def _alerts(self) -> Iterator[Metric]:
        a = self.alerts
        if a is None:
            return
        yield gauge("meshmon_alerts_firing",
                    "Open incidents of the mesh (as this node knows them), by rule.",
                    labels=["rule"], rows=[([r], n) for r, n in sorted(a["firing"].items())])
        yield gauge("meshmon_alerts_vantage_firing",
                    "Open incidents about impaired probers (a prober cut off from its "
                    "targets).", a["vantage"])  # fmt: skip
        yield gauge("meshmon_alerts_failing_here",
                    "Series this prober calls failing, by rule.", labels=["rule"],
                    rows=[([r], n) for r, n in sorted(a["failing"].items())])  # fmt: skip
        yield gauge("meshmon_alerts_prober_impaired",
                    "1 while this prober sees so many targets fail that it reports itself.",
                    int(a["impaired"]))  # fmt: skip
        yield gauge("meshmon_alert_deliveries_pending",
                    "Notifications waiting for a receiver (retrying).", a["pending"])
        yield counter("meshmon_alert_delivery_errors_total",
                      "Failed attempts to notify a receiver.", a["errors"])  # fmt: skip
        yield counter("meshmon_alert_digests_refused_total",
                      "Alert digests from peers refused (not signed by their prober).",
                      a["refused"])  # fmt: skip


def capture(agent: Agent, probes: ProbeSeries | None, lag: loop.LoopLag) -> _Agent:
    """Copy the agent's counters (on its loop); ``.build`` makes the families."""
    if probes is not None:  # series of assignments moved elsewhere go now
        probes.prune((a.check, a.target) for a in agent.scheduler.assignments)
        probes.forget_checks(c.name for c in agent.config.checks)
    mesh = agent.mesh
    members = mesh_numbers = None
    if mesh is not None:
        core = mesh.core
        members = collections.Counter(m.state.name.lower() for m in core.members())
        mesh_numbers = {"awareness": core.awareness, "queue": core.queue_length,
                        "stats": dict(core.stats), "refused": dict(core.refused),
                        "malformed": mesh.counters.get("malformed", 0),
                        "stream_failures": mesh.counters.get("stream_failures", 0)}  # fmt: skip
    transport = agent.transport
    sched = agent.scheduler
    return _Agent(
        node=agent.name, tags=",".join(agent.identity.peer.tags),
        cert_expiry=agent.identity.peer.not_after.timestamp(),
        crl_number=agent.trust.crl_number,
        checks=[(c.name, c.kind, float(c.interval)) for c in agent.config.checks],
        assignments=len(sched.assignments), in_flight=sched.in_flight,
        last_lag=sched.last_lag, max_lag=sched.max_lag, degraded_lag=sched.config.degraded_lag,
        results_written=agent.results_written, sink_errors=agent.sink_errors,
        loop_counts=list(lag.counts), loop_total=lag.total, loop_max=lag.max_recent,
        probes=probes.snapshot() if probes is not None else None,
        members=members, mesh=mesh_numbers,
        transport=None if transport is None else {"drops": dict(transport.drops),
                                                  "refused": dict(transport.admission.counts)},
        queries=None if agent.query is None else (agent.query.served, dict(agent.query.refused)),
        alerts=_alerts(agent),
        sync=agent.uploader.status() if agent.uploader is not None else None,
        store=agent.store,
    )  # fmt: skip


def _alerts(agent: Agent) -> dict[str, Any] | None:
    service = agent.alerts
    if service is None:
        return None
    firing = dict.fromkeys((r.name for r in service.config.rules), 0)
    vantage = 0
    for incident in service.book.firing():
        if incident.kind == "vantage":
            vantage += 1
        else:
            firing[incident.key[0]] = firing.get(incident.key[0], 0) + 1
    failing = dict.fromkeys((r.name for r in service.config.rules), 0)
    for rule, _, _ in service.evaluator.failing():
        failing[rule] = failing.get(rule, 0) + 1
    return {"firing": firing, "vantage": vantage, "failing": failing,
            "impaired": service.evaluator.impaired, "pending": len(service.outbox.queue),
            "errors": service.delivery_errors, "refused": service.refused_digests}  # fmt: skip
