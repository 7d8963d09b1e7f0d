"""The agent's metrics listener, as one context manager the agent enters before anything else.

``async with serve_metrics(agent):`` opens the listener of ``[metrics] listen`` (nothing at all
when it is empty) with ``/metrics``, ``/healthz`` and ``/readyz``, and the event-loop lag
sampler, for as long as the block runs. It is entered before the store is opened so that
liveness answers during a long recovery (readiness says "starting" meanwhile). The modules
that load ``prometheus_client`` are imported only when the listener is on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from meshmon.metrics.config import MetricsConfig

if TYPE_CHECKING:
    from meshmon.agent import Agent
    from meshmon.metrics.exposition import Build
    from meshmon.metrics.probes import ProbeSeries


def probe_series(config: MetricsConfig) -> ProbeSeries | None:
    """The per check x target series the agent feeds, when the listener is on."""
    if not config.listen:
        return None
    from meshmon.metrics.probes import ProbeSeries

    return ProbeSeries(config.max_series)


@asynccontextmanager
async def serve_metrics(agent: Agent) -> AsyncIterator[None]:
    """Serve the agent's metrics and health while the block runs (see the module docstring).

    Raises:
        AgentError: the listener cannot be bound (the message names ``metrics.listen``).
    """
    address = agent.config.metrics.address
    if address is None:
        yield
        return
    from meshmon.config import split_host_port
    from meshmon.metrics import agent as agent_metrics
    from meshmon.metrics import health
    from meshmon.metrics.exposition import Exposition
    from meshmon.metrics.listener import ListenerError, open_listener
    from meshmon.metrics.loop import LoopLag
    from meshmon.startup import AgentError, find

    lag = LoopLag()

    async def capture() -> Build:
        return agent_metrics.capture(agent, agent.probe_metrics, lag).build

    readiness = health.AgentReadiness(agent, [split_host_port(s) for s in agent.config.mesh.seeds])
    routes = {
        "/metrics": Exposition(capture).handle,
        "/healthz": lambda _: health.alive(agent.started_at, node=agent.name),
        "/readyz": lambda _: health.ready(readiness),
    }
    try:
        listener = open_listener(address, routes, "metrics.listen", lag)
        async with listener:
            yield
    except* ListenerError as group:
        raise AgentError(str(find(group, ListenerError)), "metrics.listen") from group
