"""``/healthz`` and ``/readyz``: is the service alive, and is it doing its job.

Alive (``/healthz``) means the service's event loop answered: the route runs on that loop, so
a wedged loop times the request out. It is 200 from the moment the listener is up; liveness
probes should not restart a node that is merely starting or alone.

Ready (``/readyz``) is a list of named checks, each with a reason, all of which must pass; the
answer is 200 or 503 with ``{"ready": ..., "checks": {name: {"ok": ..., "reason": ...}}}``.
For an agent:

``mesh``
    Joined: another member is alive (or suspect). An agent alone is ready only by design: when
    no seed names another node (``mesh.seeds`` empty, or every seed is this node's own address
    and TCP port, or a name that resolves to this node's addresses only, as a one-node
    Kubernetes cluster's seed Service does). An agent whose seeds exist but let no one in is
    not ready, and neither is one that lost every peer: it probes, but sees only itself.
``store``
    The ring store is open and its last write went to disk (its health is ``ok``). A full,
    read-only or failing disk makes it ``failing`` (results are buffered in memory) until a
    write succeeds again.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from meshmon.metrics.http import Response, json_response

if TYPE_CHECKING:
    from meshmon.agent import Agent

RESOLVE_TIMEOUT = 2.0
"""Seconds to resolve a seed name while deciding whether it is this node."""
RESOLVE_CACHE = 30.0
"""Seconds a seed name's addresses are reused (the kubelet asks every 10 s)."""


@dataclass(frozen=True)
class Check:
    """One readiness condition and why it holds or not."""

    ok: bool
    reason: str


Checks = Callable[[], Awaitable[Mapping[str, Check]]]


async def alive(started_at: float, **facts: Any) -> Response:
    """``/healthz``: the loop answered."""
    return json_response(200, {"alive": True, "uptime_s": round(time.time() - started_at, 1),
                               **facts})  # fmt: skip


async def ready(checks: Checks) -> Response:
    """``/readyz``: 200 when every check passes, else 503; reasons in the body either way."""
    results = await checks()
    ok = all(c.ok for c in results.values())
    return json_response(200 if ok else 503, {
        "ready": ok, "checks": {k: {"ok": c.ok, "reason": c.reason} for k, c in results.items()}})


def is_self(seed: tuple[str, int], resolved: Iterable[str] | None, own: Iterable[str],
            port: int) -> bool:  # fmt: skip
    """Whether ``seed`` reaches this node only: its port is ours and every address it stands
    for (itself when an IP, else ``resolved``) is one of ``own``. Pure."""
    host, seed_port = seed
    if seed_port != port:
        return False
    try:
        addresses = [ipaddress.ip_address(host.split("%", 1)[0])]
    except ValueError:
        if not resolved:
            return False  # a name that did not resolve could be anyone
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolved]
    mine = {ipaddress.ip_address(a) for a in own}
    return all(a in mine for a in addresses)


class AgentReadiness:
    """The agent's readiness checks (see the module docstring)."""

    def __init__(self, agent: Agent, seeds: Sequence[tuple[str, int]]) -> None:
        self.agent = agent
        self.seeds = list(seeds)
        self._resolved: dict[str, tuple[float, list[str] | None]] = {}

    async def __call__(self) -> dict[str, Check]:
        """Every check, in a stable order."""
        return {"mesh": await self.mesh(), "store": await self.store()}

    async def mesh(self) -> Check:
        """Joined, or alone by design."""
        mesh = self.agent.mesh
        if mesh is None:
            return Check(False, "starting: not in the mesh yet")
        live = mesh.core.num_live()
        if live > 1:
            return Check(True, f"joined: {live} live members, this node included")
        others = await self.other_seeds()
        if not others:
            return Check(True, "alone by design: no seed names another node")
        return Check(False, f"alone: no other member is alive; joining through "
                            f"{', '.join(others)} has not succeeded")  # fmt: skip

    async def other_seeds(self) -> list[str]:
        """The seeds that are not this node, as written."""
        listen = self.agent.config.listen
        own = {listen.advertise_address, listen.address} - {"0.0.0.0", "::"}
        port = self.agent.tcp_port
        out = []
        for host, seed_port in self.seeds:
            resolved = None if _is_ip(host) else await self._resolve(host, seed_port)
            if not is_self((host, seed_port), resolved, own, port):
                out.append(f"[{host}]:{seed_port}" if ":" in host else f"{host}:{seed_port}")
        return out

    async def _resolve(self, host: str, port: int) -> list[str] | None:
        now = time.monotonic()
        cached = self._resolved.get(host)
        if cached is not None and now - cached[0] < RESOLVE_CACHE:
            return cached[1]
        addresses: list[str] | None = None
        with trio.move_on_after(RESOLVE_TIMEOUT):
            try:
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                addresses = sorted({str(info[4][0]) for info in infos})
            except OSError:
                addresses = None
        self._resolved[host] = (now, addresses)
        return addresses

    async def store(self) -> Check:
        """The store is open and writing."""
        store = self.agent.store
        if store is None:
            return Check(False, "starting: the store is being opened")
        stats = await trio.to_thread.run_sync(store.stats)  # its mutex, off the loop
        health = stats.health
        state = health.get("state", "ok")
        if state == "ok":
            return Check(True, f"writable: {stats.records} records, "
                               f"{stats.bytes / stats.capacity_bytes:.0%} of capacity")  # fmt: skip
        reason = f"store {state}: {health.get('reason', 'writes refused')}"
        if health.get("buffered"):
            reason += f" ({health['buffered']} results buffered in memory)"
        if health.get("advice"):
            reason += f"; {health['advice']}"
        return Check(False, reason)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True
