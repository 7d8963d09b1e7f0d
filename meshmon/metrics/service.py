"""The agent's metrics listener, as one context manager the agent enters before anything else.

``async with serve_metrics(agent):`` opens the listener of ``[metrics] listen`` (nothing at all
when it is empty) with ``/metrics``, ``/healthz`` and ``/readyz``, and the event-loop lag
sampler, for as long as the block runs. It is entered before the store is opened so that
liveness answers during a long recovery (readiness says "starting" meanwhile). The modules
that load ``prometheus_client`` are imported only when the listener is on.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from meshmon.metrics.config import MetricsConfig
from meshmon.metrics.probes import ProbeSeries

if TYPE_CHECKING:
    from meshmon.agent import Agent

log = logging.getLogger(__name__)


def probe_series(config: MetricsConfig) -> ProbeSeries | None:
    """The per check x target series the agent feeds, when the listener is on."""
    return ProbeSeries(config.max_series) if config.listen else None


def listen_error(exc: OSError, key: str, address: tuple[str, int]) -> str:
    """One line naming ``key`` for a listener that cannot be bound."""
    host, port = address
    where = f"TCP port {port} on {host}"
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return (f"{key}: {host} is not an address of this host ({exc.strerror}); use one of "
                "its addresses (`ip -brief address`), 127.0.0.1, or 0.0.0.0 for all")
    if exc.errno == errno.EADDRINUSE:
        return (f"{key}: {where} is already in use (another agent or program: `ss -ltnp "
                f"'sport = :{port}'`); stop it or choose another port")  # fmt: skip
    if exc.errno == errno.EACCES:
        return (f"{key}: not allowed to bind {where} (ports below 1024 need root or "
                "CAP_NET_BIND_SERVICE); use 1024 or above, e.g. 9108")  # fmt: skip
    return f"{key}: cannot bind {where}: {exc.strerror or exc}"


@asynccontextmanager
async def serve_metrics(agent: Agent) -> AsyncIterator[None]:
    """Serve the agent's metrics and health while the block runs (see the module docstring).

    Raises:
        AgentError: the listener cannot be bound (the message names ``metrics.listen``).
    """
    config = agent.config.metrics
    address = config.address
    if address is None:
        yield
        return
    from meshmon.config import split_host_port
    from meshmon.metrics import agent as agent_metrics
    from meshmon.metrics import health
    from meshmon.metrics.exposition import Exposition
    from meshmon.metrics.http import serve_http
    from meshmon.metrics.loop import LoopLag
    from meshmon.startup import AgentError, find

    lag = LoopLag()
    exposition = Exposition(lambda: agent_metrics.capture(agent, agent.probe_metrics, lag).build)
    readiness = health.AgentReadiness(agent, [split_host_port(s) for s in agent.config.mesh.seeds])
    routes = {
        "/metrics": exposition.handle,
        "/healthz": lambda _: health.alive(agent.started_at, node=agent.name),
        "/readyz": lambda _: health.ready(readiness),
    }
    async with trio.open_nursery() as nursery:
        try:
            port = await nursery.start(functools.partial(serve_http, address, routes))
        except* OSError as group:
            exc = find(group, OSError)
            assert exc is not None
            raise AgentError(listen_error(exc, "metrics.listen", address),
                             "metrics.listen") from exc  # fmt: skip
        nursery.start_soon(lag.run)
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        log.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)", host, port)
        yield
        nursery.cancel_scope.cancel()
