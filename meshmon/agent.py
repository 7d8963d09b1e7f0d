"""``Agent``: wires the parts of a meshmon agent in one trio nursery.

This is the embedding API: build an :class:`Agent` from an :class:`~meshmon.config.AgentConfig`
and ``await nursery.start(agent.run)``; ``await agent.stop()`` leaves the mesh gracefully, then
cancel the scope.

Data flow: the transport (sealed UDP + mTLS TCP) carries membership; every change of the view
recomputes placement, and the scheduler starts or stops exactly the assignments that changed;
each probe result goes to the ring store (payload ``[encoded result, degraded]``); the control
API answers from all of these without blocking them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from cryptography import x509

from meshmon import pki
from meshmon.alerts.service import STORE_CHECK, AlertService
from meshmon.config import AgentConfig, CheckConfig, split_host_port
from meshmon.control import ControlError, MeshQuery, ResultQuery, serve_control
from meshmon.membership import NodeMeta, State
from meshmon.membership.identity import address_allowed
from meshmon.mesh import MeshService
from meshmon.metrics.service import probe_series, serve_metrics
from meshmon.net import PURPOSE_ECHO, ListenError, MeshTransport, TransportConfig
from meshmon.placement import AgentInfo, Assignment
from meshmon.probes.base import ProbeContext
from meshmon.probes.echo_guard import mesh_codec
from meshmon.probes.icmp import IcmpPermissionError
from meshmon.probes.services import run_probe_services
from meshmon.query.service import Peer, QueryService
from meshmon.query.wire import Question
from meshmon.scheduler import Scheduler
from meshmon.seeds import SeedWatch
from meshmon.startup import (
    AgentError,
    control_socket_error,
    echo_error,
    listen_error,
    open_data_store,
)
from meshmon.store import AsyncRingStore, RecordDropped
from meshmon.sync.policy import AggregatorUrls
from meshmon.version import __version__
from meshmon.wire.ingest import MemberReport

if TYPE_CHECKING:
    from meshmon.results import MonitoringResult
    from meshmon.results.encoded import EncodedResult
    from meshmon.sync.archive import AggregatorArchive
    from meshmon.sync.uploader import Uploader

log = logging.getLogger(__name__)

ECHO_PORT_OFFSET = 1
"""The UDP echo responder listens on the gossip port + 1 (7947 by default); its datagrams are
sealed with the mesh keys, so it answers members only (:mod:`meshmon.probes.echo_guard`)."""
CRL_POLL = 2.0
"""Seconds between checks of the CRL file for a newer list dropped in by the operator."""
_PROBING = ("probes", "probe_failed", "probe_first_contact", "tcp_fallback_ok", "suspected",
            "refutations", "push_pull_merged", "push_pull_failed", "catch_up")  # fmt: skip
STORE_ERROR_LOG_EVERY = 60.0
"""Seconds between log lines about results the store refused (the first is logged at once)."""


class Agent:
    """One meshmon agent."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.started_at = time.time()
        tls = config.tls
        self.identity, self.trust = pki.load_identity(tls.ca_cert, tls.cert, tls.key, tls.crl)
        if self.identity.name != config.node.name:
            raise AgentError(
                f"node.name is {config.node.name!r} but the certificate {tls.cert} is for "
                f"{self.identity.name!r}; set node.name to match or issue a certificate for it"
            )
        advertised = config.listen.advertise_address
        if not address_allowed(self.identity.certificate, advertised):
            raise AgentError(
                f"listen.advertise: the agent would announce address {advertised}, which is not "
                f"among the IP "
                f"addresses of its certificate {tls.cert}, so every peer would refuse it; set "
                "listen.advertise to one of them or issue a certificate that includes it"
            )
        self._load_cached_crl()
        self.tcp_port = config.listen.tcp_port
        self.store: AsyncRingStore | None = None
        self.mesh: MeshService | None = None
        self.transport: MeshTransport | None = None
        self.query: QueryService | None = None
        self.probe_context: ProbeContext | None = None
        self.scheduler = Scheduler(self.name, self._run_check, self._store_results,
                                   batch_runner=self._run_batch)
        self.results_written = 0
        self._contexts: dict[str, ProbeContext] = {}
        self.results_dropped = 0
        """Refused by a failing store whose buffer was full (the store counts and logs them)."""
        self.sink_errors = 0
        self._sink_error_logged = -STORE_ERROR_LOG_EVERY
        self._sink_errors_logged = 0
        self._crl_mtime = 0.0
        self.sync_urls = AggregatorUrls(config.sync.all_urls, config.sync.learn)
        """Aggregators: configured, then learnt from members' metadata."""
        self.uploader: Uploader | None = None
        """Runs once an aggregator URL is known; never in a serverless mesh."""
        self.archive: AggregatorArchive | None = None
        """Answers mesh history older than the agents hold, once an aggregator URL is known."""
        self._nursery: trio.Nursery | None = None
        self._reports: tuple[MemberReport, ...] | None = None
        self.alerts: AlertService | None = None
        self.probe_metrics = probe_series(config.metrics)  # None without a metrics listener

    @property
    def name(self) -> str:
        """This node's name."""
        return self.identity.name

    @property
    def crl_cache(self) -> Path:
        """Where the newest CRL learnt from peers is kept across restarts."""
        return self.config.node.data_dir / "crl.pem"

    def _load_cached_crl(self) -> None:
        try:
            crl = x509.load_pem_x509_crl(self.crl_cache.read_bytes())
            self.trust.update_crl(crl)
        except (OSError, ValueError, pki.PkiError):
            pass  # no cache yet, or an unusable one: the configured CRL stands

    def describe(self) -> str:
        """One line saying who this agent is and where it listens."""
        listen = self.config.listen
        return (
            f"meshmon {__version__} node {self.name} tags={','.join(self.identity.peer.tags)} "
            f"cert={self.identity.peer.fingerprint[:16]} "
            f"udp={listen.advertise_address}:{listen.udp_port} "
            f"tcp={listen.advertise_address}:{self.tcp_port}"
        )

    def _meta(self) -> NodeMeta:
        listen = self.config.listen
        return NodeMeta(
            name=self.name, address=listen.advertise_address, udp_port=listen.udp_port,
            tcp_port=self.tcp_port, tags=self.identity.peer.tags, version=__version__,
            cert_fingerprint=bytes.fromhex(self.identity.peer.fingerprint),
            sync_urls=self.config.sync.all_urls if self.config.sync.advertise else (),
        )  # fmt: skip

    # --- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled."""
        cfg = self.config
        listen = cfg.listen
        seeds = [split_host_port(s) for s in cfg.mesh.seeds]
        async with serve_metrics(self), open_data_store(cfg.node.data_dir, cfg.store) as store:
            self.store = store
            async with trio.open_nursery() as nursery:
                transport = MeshTransport(self.identity, self.trust, TransportConfig(
                    host=listen.address, udp_port=listen.udp_port, tcp_port=listen.tcp_port))
                try:
                    await nursery.start(transport.run)
                except* ListenError as group:
                    raise listen_error(group, listen) from group
                self.transport = transport
                self.tcp_port = transport.tcp_address[1]
                self.probe_context = await self._start_probes(nursery)
                self.mesh = MeshService(cfg.mesh.membership(), self._meta(), transport,
                                        self.trust, seeds, on_change=self._view_changed)
                seed_watch = SeedWatch(seeds, max_delay=cfg.mesh.membership().reconnect_interval)
                self.mesh.on_seed_failure = seed_watch.failed
                self.query = QueryService(transport, self._peers, self._answer, self.trust)
                self.query.install()
                if cfg.alerts.enabled:
                    self.alerts = AlertService(cfg.alerts, _AlertHost(self, self.mesh))
                    self.mesh.core.user_filter = self.alerts.accept
                    self.mesh.on_user = self.alerts.received
                await nursery.start(self.mesh.run)
                if self.alerts is not None:
                    await nursery.start(self.alerts.run)
                nursery.start_soon(seed_watch.run, self.mesh)
                await nursery.start(self.scheduler.run)
                self._nursery = nursery
                self._view_changed()
                nursery.start_soon(self._watch_crl_file)
                try:
                    await nursery.start(serve_control, self, cfg.control_socket)
                except* OSError as group:
                    raise control_socket_error(group, cfg.control_socket,
                                               configured=cfg.control.socket is not None) from group
                log.info("%s", self.describe())
                task_status.started(self)

    async def _start_probes(self, nursery: trio.Nursery) -> ProbeContext:
        listen = self.config.listen
        echo_port = listen.udp_port + ECHO_PORT_OFFSET if listen.udp_port else 0
        assert self.transport is not None
        codec = mesh_codec(self.transport.keyring, self.transport.name_at, PURPOSE_ECHO,
                           ECHO_PORT_OFFSET)  # sealed: never a reflector (see echo_guard)
        start = functools.partial(run_probe_services, self.name, echo_address=listen.address,
                                  echo_port=echo_port, codec=codec)  # fmt: skip
        try:
            try:
                ctx: ProbeContext = await nursery.start(start)
            except* IcmpPermissionError as group:
                log.error("ICMP is unavailable, ping and ICMP traces will report errors: %s",
                          group.exceptions[0])  # fmt: skip
                ctx = await nursery.start(functools.partial(start, enable_icmp=False))
        except* OSError as group:
            raise echo_error(group, listen.address, echo_port) from group
        return ctx

    async def stop(self) -> None:
        """Leave the mesh gracefully (peers mark this node "left", not "dead")."""
        log.info("node %s leaving the mesh", self.name)
        if self.mesh is not None:
            await self.mesh.leave()

    def reload(self, config: AgentConfig) -> None:
        """Apply a new config's checks without restarting anything else."""
        self.config = dataclasses.replace(self.config, checks=config.checks)
        self._view_changed()
        log.info("config reloaded: %d check(s)", len(config.checks))

    async def _watch_crl_file(self) -> None:
        path = self.config.tls.crl
        while True:
            await trio.sleep(CRL_POLL)
            try:
                mtime = path.stat().st_mtime
                if mtime == self._crl_mtime:
                    continue
                self._crl_mtime = mtime
                crl = x509.load_pem_x509_crl(path.read_bytes())
            except (OSError, ValueError) as exc:
                log.debug("CRL file %s unreadable: %s", path, exc)
                continue
            if self.mesh is not None and self.mesh.adopt_crl(crl, source=str(path)):
                self._save_crl_cache()

    def _save_crl_cache(self) -> None:
        from cryptography.hazmat.primitives import serialization

        try:
            self.crl_cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.crl_cache.with_suffix(".tmp")
            tmp.write_bytes(self.trust.crl.public_bytes(serialization.Encoding.PEM))
            tmp.replace(self.crl_cache)
        except OSError as exc:
            log.warning("cannot cache the CRL in %s: %s", self.crl_cache, exc)

    # --- placement and probing ---------------------------------------------------------------

    def view(self) -> list[AgentInfo]:
        """The membership view as placement sees it (suspects still count as members)."""
        if self.mesh is None:
            return [AgentInfo(self.name, frozenset(self.identity.peer.tags),
                              self.config.listen.advertise_address)]  # fmt: skip
        return [
            AgentInfo(m.meta.name, frozenset(m.meta.tags), m.meta.address,
                      alive=m.state in (State.ALIVE, State.SUSPECT))
            for m in self.mesh.core.members()
        ]  # fmt: skip

    def _view_changed(self) -> None:
        self.scheduler.update(self.config.checks, self.view())
        self._reports = None
        if self.mesh is not None and self.sync_urls.learn:
            live = (State.ALIVE, State.SUSPECT)
            advertised = [(m.meta.name, m.meta.sync_urls) for m in self.mesh.core.members()
                          if m.meta.sync_urls and m.state in live and m.meta.name != self.name]
            if self.sync_urls.update(advertised):
                log.info("aggregator URL(s) learnt from members: %s",
                         "; ".join(f"{url} (from {', '.join(names)})"
                                   for url, names in self.sync_urls.learnt.items()))  # fmt: skip
                if self.uploader is not None:
                    self.uploader.wake()
        self._start_sync()

    def _start_sync(self) -> None:
        """Start the uploader once an aggregator URL is known (configured or learnt)."""
        if self.uploader is not None or self._nursery is None or self.store is None:
            return
        if not self.sync_urls.all():
            return
        from meshmon.sync.uploader import Uploader  # only agents with an aggregator load it

        self.uploader = Uploader(self.store, self.identity, self.trust, self.config.sync,
                                 self.sync_urls.all, self._member_reports)  # fmt: skip
        self._nursery.start_soon(self.uploader.run)
        if self.query is not None:  # history older than the agents hold: from the aggregator
            from meshmon.sync.archive import AggregatorArchive

            self.query.archive = self.archive = AggregatorArchive(self.sync_urls.all,
                                                                  self.identity, self.trust)

    def _member_reports(self) -> tuple[MemberReport, ...]:
        """The membership view as the aggregator keeps it (this agent's own view; rebuilt only
        after a change of the view)."""
        if self.mesh is None:
            return ()
        if self._reports is None:
            self._reports = tuple(
                MemberReport(m.meta.name, m.state.name.lower(), m.incarnation, m.meta.address,
                             tuple(m.meta.tags), m.meta.version)
                for m in sorted(self.mesh.core.members(), key=lambda m: m.meta.name))  # fmt: skip
        return self._reports

    def _context(self, check: str) -> ProbeContext:
        assert self.probe_context is not None
        ctx = self._contexts.get(check)
        if ctx is None or ctx.icmp is not self.probe_context.icmp:
            ctx = self._contexts[check] = dataclasses.replace(self.probe_context, check=check)
        return ctx

    def _probe_target(self, assignment: Assignment, check: CheckConfig) -> str:
        """What the probe is aimed at: a mesh target's address, with our TCP port for tcp/tls
        and our echo port for udp echo checks (one port plan per mesh)."""
        if not assignment.mesh:
            return assignment.target
        if check.params.get("port") is None and check.kind in ("tcp", "tls"):
            return f"{assignment.address}:{self.tcp_port}"
        if check.params.get("port") is None and check.params.get("mode") == "echo":
            return f"{assignment.address}:{self.config.listen.udp_port + ECHO_PORT_OFFSET}"
        return assignment.address

    async def _run_check(
        self, assignment: Assignment, check: CheckConfig
    ) -> list[MonitoringResult]:
        from meshmon.probes.registry import run_probe  # the probe kinds load with a first check

        target = self._probe_target(assignment, check)
        results = await run_probe(check.kind, target, check.params, check.timeout,
                                  self._context(check.name))  # fmt: skip
        if assignment.mesh:  # record the agent's name, not its address, as the target
            results = [dataclasses.replace(r, target=assignment.target) for r in results]
        return results

    async def _run_batch(
        self, check: CheckConfig, assignments: Sequence[Assignment]
    ) -> list[list[EncodedResult]]:
        from meshmon.probes.batch import run_probe_batch_encoded

        targets = [self._probe_target(a, check) for a in assignments]
        return await run_probe_batch_encoded(check.kind, targets, check.params, check.timeout,
                                             self._context(check.name),
                                             record_as=[a.target for a in assignments])  # fmt: skip

    async def _store_results(self, items: Sequence[tuple[Assignment, Any, bool]]) -> None:
        from meshmon.results.encoded import EncodedResult, encoded

        assert self.store is not None
        if self.alerts is not None and self.alerts.active:
            self._observe(items)
        if self.probe_metrics is not None:
            self.probe_metrics.record(items)
        records = [(one.started_at, a.check, a.target,
                    *(one if type(one) is EncodedResult else encoded(one)).stored(degraded))
                   for a, results, degraded in items for one in results]  # fmt: skip
        try:
            await self.store.append_batch(records)
            self.results_written += len(records)
        except RecordDropped as exc:  # the store logs and counts these itself, rate-limited
            self.results_written += len(exc.kept)
            self.results_dropped += len(records) - len(exc.kept)
        except Exception as exc:  # a failed disk must not stop probing
            self.sink_errors += len(records)
            now = time.monotonic()
            if now - self._sink_error_logged >= STORE_ERROR_LOG_EVERY:
                log.error("cannot store %d result(s) of %s: %s (%d results refused since the "
                          "last such line)", len(records), items[0][0].check, exc,
                          self.sink_errors - self._sink_errors_logged)  # fmt: skip
                self._sink_error_logged, self._sink_errors_logged = now, self.sink_errors

    # --- the control API's view of the agent (meshmon.control.AgentApi) ---

    def api_status(self) -> dict[str, Any]:
        """Identity, uptime, version, store and loss counters."""
        listen = self.config.listen
        status: dict[str, Any] = {
            "node": self.name,
            "tags": list(self.identity.peer.tags),
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 1),
            "address": listen.advertise_address,
            "udp_port": listen.udp_port,
            "tcp_port": self.tcp_port,
            "cert_fingerprint": self.identity.peer.fingerprint,
            "cert_expires": self.identity.peer.not_after.isoformat(),
            "crl_number": self.trust.crl_number,
            "checks": len(self.config.checks),
            "assignments": len(self.scheduler.assignments),
            "degraded": self.scheduler.last_lag > self.scheduler.config.degraded_lag,
            "loop_lag_ms": round(self.scheduler.last_lag * 1000, 2),
            "results_written": self.results_written,
        }
        if self.store is not None:
            stats = self.store.stats()
            health = stats.health
            status["store"] = {
                "state": health["state"], "id": stats.store_id, "records": stats.records,
                "bytes": stats.bytes,
                "capacity_bytes": stats.capacity_bytes, "segments": stats.segments,
                "newest_seq": stats.newest_seq, "durable_seq": stats.durable_seq,
                "dropped_records": stats.dropped_records, "buffered": health["buffered"],
                "lost": stats.lost_records + health["lost"],
                "lost_unsynced": stats.lost_records, "lost_disk": health["lost"],
                "write_errors": self.sink_errors,
            }  # fmt: skip
            for key in ("since", "reason", "advice"):
                if key in health:
                    status["store"][key] = health[key]
            if health["last_outage"]:
                status["store"]["last_outage"] = health["last_outage"]
            if health["recovery_report"]:
                status["store"]["recovery_report"] = health["recovery_report"]
            if health["state"] != "ok":
                status["degraded"] = True
                status["degraded_reason"] = (f"store {health['state']}: "
                                             f"{health.get('reason', 'writes refused')}")
        if self.uploader is not None:
            status["sync"] = self.uploader.status()
        else:
            status["sync"] = {"state": "off",
                              "reason": "no aggregator URL configured or learnt from members"}
        if self.archive is not None:
            status["sync"]["archive"] = {"asked": self.archive.asked,
                                         "failed": self.archive.failed}  # fmt: skip
        if self.sync_urls.learnt:
            status["sync"]["learnt"] = {u: list(n) for u, n in self.sync_urls.learnt.items()}
        if self.transport is not None:
            status["dropped_datagrams"] = dict(self.transport.drops)
            status["refused_connections"] = dict(self.transport.admission.counts)
            status["streams"] = dict(sorted(self.transport.streams.items()))
        if self.query is not None:  # mesh queries answered for peers, and askers turned away
            status["queries"] = {"served": self.query.served, "refused": dict(self.query.refused)}
        if self.mesh is not None:
            core = self.mesh.core
            status["membership"] = {"live": core.num_live(), "awareness": core.awareness,
                                    **self.mesh.counters,
                                    # what stream_failures counts, by kind:reason
                                    "stream_failures_by_reason": dict(
                                        sorted(self.mesh.failures.items())),
                                    # self-statements not proven by their certificate, by reason
                                    "refused": dict(sorted(core.refused.items())),
                                    # announcements whose certificate was fetched (not refusals)
                                    "certificates": {k: v for k, v in sorted(core.stats.items())
                                                     if "cert" in k},
                                    # failure detection: probes, failed ones, suspicions...
                                    "probing": {k: core.stats[k] for k in _PROBING}}  # fmt: skip
        return status

    def _observe(self, items: Sequence[tuple[Assignment, Any, bool]]) -> None:
        """Feed alert rules; results taken while degraded say nothing about targets."""
        from meshmon.alerts.observe import observation  # with results: agents with checks

        assert self.alerts is not None
        tags: dict[str, tuple[str, ...]] = {}
        if any(a.mesh for a, _, _ in items):
            tags = {a.name: tuple(sorted(a.tags)) for a in self.view()}
        for a, results, degraded in items:
            if degraded:
                continue
            for one in results:
                self.alerts.observe(observation(one, a.target, tags.get(a.target, ())))

    def api_alerts(self) -> dict[str, Any]:
        """Alert rules, this prober's verdicts, firing and recent incidents."""
        if self.alerts is None:
            return {"enabled": False, "rules": [], "firing": [], "recent": [],
                    "receivers": [], "failing_here": [], "impaired": False}  # fmt: skip
        return self.alerts.status()

    def api_members(self) -> list[dict[str, Any]]:
        """The membership view."""
        return self.mesh.members_json() if self.mesh is not None else []

    def api_assignments(self) -> dict[str, Any]:
        """What this agent probes and the coverage of each target."""
        placement = self.scheduler.placement
        if placement is None:
            return {"mine": [], "coverage": []}
        checks = {c.name: c for c in self.config.checks}
        mine = [{"check": a.check, "kind": checks[a.check].kind, "target": a.target,
                 "address": a.address, "interval": checks[a.check].interval}
                for a in placement.assignments(self.name) if a.check in checks]  # fmt: skip
        coverage = []
        for check in self.config.checks:
            for target, cov in sorted(placement.coverage(check.name).items()):
                coverage.append({"check": check.name, "target": target,
                                 "owners": list(placement.owners(check.name, target)),
                                 "wanted": cov.wanted})  # fmt: skip
        return {"mine": mine, "coverage": coverage}

    def _peers(self) -> list[Peer]:
        """The membership view as mesh queries see it."""
        if self.mesh is None:
            return []
        return [Peer(m.meta.name, m.meta.tcp_addr, m.state.name.lower(), m.meta.tags,
                     m.meta.cert_fingerprint.hex()) for m in self.mesh.core.members()]  # fmt: skip

    def _answer(self, question: Question, peers: Sequence[Peer]) -> dict[str, Any]:
        """This agent's own answer to a mesh query (runs in a worker thread)."""
        from meshmon.query.answers import Context, answer  # with the first question

        if self.store is None:
            raise ControlError("the store is not open")

        def tagged(tag: str) -> list[str]:
            return [p.name for p in peers if tag in p.tags]

        return answer(self.store, question, Context(time.time(), self.config.checks, tagged))

    async def api_mesh(self, query: MeshQuery) -> dict[str, Any]:
        """A mesh-wide question, asked of the other agents (see :mod:`meshmon.query`)."""
        if self.query is None:
            raise ControlError("the agent's mesh is still starting; ask again in a moment")
        return await self.query.envelope(query.question, query.timeout, query.max_bytes)

    def api_results(self, query: ResultQuery) -> list[dict[str, Any]]:
        """Stored results matching ``query``, newest first."""
        from meshmon.results import ResultDecodeError, decode_result
        from meshmon.results.encoded import unstored

        if self.store is None:
            return []
        if query.latest:
            records = self.store.latest(check=query.check, target=query.target)
        else:
            records = self.store.query(check=query.check, target=query.target,
                                       since=query.since, until=query.until, limit=query.limit)
        out = []
        for rec in records:
            if rec.check == STORE_CHECK and query.check != STORE_CHECK:
                continue  # incident history, not a result (ask for check=_alerts to see it)
            try:
                encoded, degraded = unstored(rec.value())
                result = decode_result(encoded)
            except (ResultDecodeError, ValueError, TypeError) as exc:
                out.append({"seq": rec.seq, "timestamp": rec.ts, "check": rec.check,
                            "target": rec.target, "success": False, "response_time_ms": None,
                            "error": f"unreadable record: {exc}", "degraded": False})  # fmt: skip
                continue
            out.append({"seq": rec.seq, "timestamp": rec.ts, "check": rec.check,
                        "target": rec.target, "kind": result.kind,
                        "success": result.is_successful(),
                        "response_time_ms": result.response_time_ms(),
                        "error": result.error_message(), "degraded": bool(degraded)})  # fmt: skip
        return out[: query.limit]


class _AlertHost:
    """What the alert service needs from the agent (:class:`~meshmon.alerts.service.AlertHost`)."""

    def __init__(self, agent: Agent, mesh: MeshService) -> None:
        self.agent, self.mesh, self.name = agent, mesh, agent.name

    def publish(self, key: str, version: int, payload: bytes) -> None:
        self.mesh.core.publish(trio.current_time(), key, version, payload)
        self.mesh.wake()

    def member_meta(self, name: str) -> NodeMeta | None:
        m = self.mesh.core.member(name)
        return m.meta if m is not None and m.state in (State.ALIVE, State.SUSPECT) else None

    def owners(self, check: str, target: str) -> tuple[str, ...]:
        placement = self.agent.scheduler.placement
        return () if placement is None else placement.owners(check, target)

    def sign(self, data: bytes) -> bytes:
        return self.mesh.auth.sign_blob(data)

    def verify(self, meta: NodeMeta, data: bytes, sig: bytes) -> str | None:
        return self.mesh.auth.verify_blob(meta, data, sig)

    async def record(self, ts: float, target: str, payload: Any) -> None:
        if self.agent.store is not None:
            await self.agent.store.append_batch([(ts, STORE_CHECK, target, payload)])
