"""Prometheus metrics and health endpoints (``/metrics``, ``/healthz``, ``/readyz``).

The agent serves them on the opt-in listener of ``[metrics] listen`` (the aggregator on
``[aggregator.metrics] listen``). Modules:

- :mod:`~meshmon.metrics.config`: the ``[metrics]`` table.
- :mod:`~meshmon.metrics.probes`: per check x target outcomes, counted on the hot path.
- :mod:`~meshmon.metrics.exposition`: capture on the loop, encode in a worker thread.
- :mod:`~meshmon.metrics.text`: the bulky probe series written straight in the text format.
- :mod:`~meshmon.metrics.agent`: the agent's families, read from counters it keeps anyway.
- :mod:`~meshmon.metrics.health`: liveness and readiness checks.
- :mod:`~meshmon.metrics.http`: the small h11 server on trio.
- :mod:`~meshmon.metrics.listener`: a service's listener (agent and aggregator), bind errors.
- :mod:`~meshmon.metrics.loop`: event-loop lag.
- :mod:`~meshmon.metrics.service`: the agent's listener as one context manager.

Only the config and the probe series are re-exported here: importing this package must not load
``prometheus_client`` (an agent without the listener never does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshmon.metrics.config import MetricsConfig

if TYPE_CHECKING:
    from meshmon.metrics.probes import ProbeSeries


def __getattr__(name: str) -> Any:  # PEP 562: the probe series load with the listener
    if name == "ProbeSeries":
        from meshmon.metrics.probes import ProbeSeries

        return ProbeSeries
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MetricsConfig", "ProbeSeries"]
