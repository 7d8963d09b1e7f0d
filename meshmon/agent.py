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
from pathlib import Path
from typing import Any

import trio
from cryptography import x509

from meshmon import pki
from meshmon.config import AgentConfig, CheckConfig, split_host_port
from meshmon.control import ResultQuery, serve_control
from meshmon.membership import NodeMeta, State
from meshmon.mesh import MeshService
from meshmon.net import PURPOSE_ECHO, MeshTransport, TransportConfig
from meshmon.placement import AgentInfo, Assignment
from meshmon.probes import IcmpPermissionError, ProbeContext, run_probe
from meshmon.probes.echo_guard import mesh_codec
from meshmon.probes.services import run_probe_services
from meshmon.results import MonitoringResult, ResultDecodeError, decode_result, encode_result
from meshmon.scheduler import Scheduler
from meshmon.store import AsyncRingStore, open_store
from meshmon.version import __version__

log = logging.getLogger(__name__)

ECHO_PORT_OFFSET = 1
"""The UDP echo responder listens on the gossip port + 1 (7947 by default); its datagrams are
sealed with the mesh keys, so it answers members only (:mod:`meshmon.probes.echo_guard`)."""
CRL_POLL = 2.0
"""Seconds between checks of the CRL file for a newer list dropped in by the operator."""


class AgentError(Exception):
    """The agent cannot start; the message says what to fix."""


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
        self._load_cached_crl()
        self.tcp_port = config.listen.tcp_port
        self.store: AsyncRingStore | None = None
        self.mesh: MeshService | None = None
        self.transport: MeshTransport | None = None
        self.probe_context: ProbeContext | None = None
        self.scheduler = Scheduler(self.name, self._run_check, self._store_result)
        self.results_written = 0
        self.sink_errors = 0
        self._crl_mtime = 0.0

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
            tcp_port=self.tcp_port, tags=tuple(self.config.node.tags), version=__version__,
            cert_fingerprint=bytes.fromhex(self.identity.peer.fingerprint),
        )  # fmt: skip

    # --- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled."""
        cfg = self.config
        listen = cfg.listen
        seeds = [split_host_port(s) for s in cfg.mesh.seeds]
        async with open_store(cfg.node.data_dir / "store", cfg.store) as store:
            self.store = store
            async with trio.open_nursery() as nursery:
                transport = MeshTransport(self.identity, self.trust, TransportConfig(
                    host=listen.address, udp_port=listen.udp_port, tcp_port=listen.tcp_port))
                await nursery.start(transport.run)
                self.transport = transport
                self.tcp_port = transport.tcp_address[1]
                self.probe_context = await self._start_probes(nursery)
                self.mesh = MeshService(cfg.mesh.membership(), self._meta(), transport,
                                        self.trust, seeds, on_change=self._view_changed)
                await nursery.start(self.mesh.run)
                await nursery.start(self.scheduler.run)
                self._view_changed()
                nursery.start_soon(self._watch_crl_file)
                await nursery.start(serve_control, self, cfg.control_socket)
                log.info("%s", self.describe())
                task_status.started(self)

    async def _start_probes(self, nursery: trio.Nursery) -> ProbeContext:
        listen = self.config.listen
        assert self.transport is not None
        codec = mesh_codec(self.transport.keyring, self.transport.name_at, PURPOSE_ECHO,
                           ECHO_PORT_OFFSET)  # sealed: never a reflector (see echo_guard)
        start = functools.partial(run_probe_services, self.name, echo_address=listen.address,
                                  echo_port=listen.udp_port + ECHO_PORT_OFFSET if listen.udp_port
                                  else 0, codec=codec)  # fmt: skip
        try:
            ctx: ProbeContext = await nursery.start(start)
        except IcmpPermissionError as exc:
            log.error("ICMP is unavailable, ping and ICMP traces will report errors: %s", exc)
            ctx = await nursery.start(functools.partial(start, enable_icmp=False))
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
            return [AgentInfo(self.name, frozenset(self.config.node.tags),
                              self.config.listen.advertise_address)]  # fmt: skip
        return [
            AgentInfo(m.meta.name, frozenset(m.meta.tags), m.meta.address,
                      alive=m.state in (State.ALIVE, State.SUSPECT))
            for m in self.mesh.core.members()
        ]  # fmt: skip

    def _view_changed(self) -> None:
        self.scheduler.update(self.config.checks, self.view())

    async def _run_check(
        self, assignment: Assignment, check: CheckConfig
    ) -> list[MonitoringResult]:
        assert self.probe_context is not None
        ctx = dataclasses.replace(self.probe_context, check=check.name)
        target = assignment.target
        if assignment.mesh:
            target = assignment.address
            if check.params.get("port") is None and check.kind in ("tcp", "tls"):
                target = f"{assignment.address}:{self.tcp_port}"
            elif check.params.get("port") is None and check.params.get("mode") == "echo":
                echo = self.config.listen.udp_port + ECHO_PORT_OFFSET  # one port plan per mesh
                target = f"{assignment.address}:{echo}"
        results = await run_probe(check.kind, target, check.params, check.timeout, ctx)
        if assignment.mesh:  # record the agent's name, not its address, as the target
            results = [dataclasses.replace(r, target=assignment.target) for r in results]
        return results

    async def _store_result(self, assignment: Assignment, result: Any, degraded: bool) -> None:
        assert self.store is not None
        for one in result:  # the runner returns a list (one result per address family)
            try:
                await self.store.append(one.started_at, assignment.check, assignment.target,
                                        [encode_result(one), degraded])  # fmt: skip
                self.results_written += 1
            except Exception as exc:  # a full or failed disk must not stop probing
                self.sink_errors += 1
                log.error("cannot store a result of %s/%s: %s", assignment.check,
                          assignment.target, exc)  # fmt: skip

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
            status["store"] = {
                "records": stats.records, "bytes": stats.bytes,
                "capacity_bytes": stats.capacity_bytes, "segments": stats.segments,
                "dropped_records": stats.dropped_records, "lost": stats.lost_records,
                "durable_seq": stats.durable_seq, "write_errors": self.sink_errors,
            }  # fmt: skip
        if self.transport is not None:
            status["dropped_datagrams"] = dict(self.transport.drops)
        if self.mesh is not None:
            status["membership"] = {"live": self.mesh.core.num_live(),
                                    "awareness": self.mesh.core.awareness,
                                    **self.mesh.counters}  # fmt: skip
        return status

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

    def api_results(self, query: ResultQuery) -> list[dict[str, Any]]:
        """Stored results matching ``query``, newest first."""
        if self.store is None:
            return []
        if query.latest:
            records = self.store.latest(check=query.check, target=query.target)
        else:
            records = self.store.query(check=query.check, target=query.target,
                                       since=query.since, until=query.until, limit=query.limit)
        out = []
        for rec in records:
            try:
                encoded, degraded = rec.value()
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
