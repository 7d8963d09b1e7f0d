"""``ping``: a burst of ICMP echo requests on the shared engine → :class:`PingResult`.

Params: ``count`` (default 5), ``interval`` seconds between requests (default 0.2),
``reply_timeout`` seconds to wait for each reply (default 1.0, shortened so the whole burst fits
the check's timeout), ``family``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshmon.probes.base import ParamError, ProbeError, param
from meshmon.probes.icmp import Echo, IcmpEngine
from meshmon.probes.params import FAMILY, Param, ParamSchema, fits_timeout, host_target
from meshmon.results import PingResult


@dataclass(frozen=True)
class PingParams:
    """Parameters of a ``ping`` check."""

    count: int = 5
    """Echo requests per run: enough for a median and a loss figure, cheap at 1000 targets."""
    interval: float = 0.2
    """Seconds between requests (ping's default 1 s is too slow for a short burst)."""
    reply_timeout: float = 1.0
    """Seconds to wait for each reply; a later reply counts as lost."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any], timeout: float) -> PingParams:
        """Validated parameters; ``reply_timeout`` is cut so the burst ends within ``timeout``."""
        count = param(params, "count", int, cls.count)
        interval = param(params, "interval", float, cls.interval)
        reply = param(params, "reply_timeout", float, min(cls.reply_timeout, timeout))
        if not 1 <= count <= 1000:
            raise ParamError("params.count must be between 1 and 1000")
        if interval < 0 or reply <= 0:
            raise ParamError("params.interval must be >= 0 and params.reply_timeout > 0")
        budget = timeout - (count - 1) * interval
        if budget <= 0:
            raise ParamError(f"count={count} × interval={interval}s does not fit the check's "
                             f"timeout of {timeout}s; lower count or interval or raise timeout")
        return cls(count, interval, min(reply, budget))


PARAMS = ParamSchema(
    params={
        "count": Param((int,), "echo requests per run (5)", low=1, high=1000),
        "interval": Param((float,), "seconds between requests (0.2)", low=0),
        "reply_timeout": Param((float,), "seconds to wait for each reply (1.0)", low=0.001),
        "family": FAMILY,
    },
    target=host_target,
    rules=(fits_timeout("count", PingParams.count, "interval", PingParams.interval),),
    parse=PingParams.from_params,
)
"""What a ``ping`` check accepts (checked by ``meshmon config check`` and before each run)."""


def outcome(echoes: Sequence[Echo]) -> tuple[tuple[float | None, ...], tuple[str, ...]]:
    """Per-request RTTs (``None`` when lost) and the counted errors of a burst. Pure.

    Errors are counted per (error, responder), in order of first appearance, e.g.
    ``"3 host unreachable from 10.0.0.1"``.
    """
    if len(echoes) == 1:  # the usual burst of one: no error counting to do
        e = echoes[0]
        if e.kind == "reply":
            return (e.rtt_ms,), ()
        if not e.error:
            return (None,), ()
    samples = tuple(e.rtt_ms if e.kind == "reply" else None for e in echoes)
    counts: dict[str, int] = {}
    for e in echoes:
        if e.kind != "reply" and e.error:
            text = f"{e.error} from {e.responder}" if e.responder else e.error
            counts[text] = counts.get(text, 0) + 1
    return samples, tuple(f"{n} {text}" for text, n in counts.items())


def summarize(address: str, echoes: Sequence[Echo]) -> PingResult:
    """Fold per-packet outcomes into a :class:`PingResult`. Pure.

    Errors as :func:`outcome` counts them; the result's ``error_message`` puts the number of
    requests without a reply in front, so the text has the same shape however the answers
    were timed.
    """
    samples, errors = outcome(echoes)
    latencies = tuple(s for s in samples if s is not None)
    avg = sum(latencies) / len(latencies) if latencies else None
    return PingResult(len(latencies), len(echoes) - len(latencies), latencies, errors, avg,
                      address, samples=samples)


async def ping(engine: IcmpEngine | None, address: str, family: int, p: PingParams) -> PingResult:
    """Run one burst."""
    if engine is None:
        raise ProbeError("ping needs the ICMP engine; start IcmpEngine.run in the agent's nursery")
    echoes = await engine.ping(address, family, count=p.count, interval=p.interval,
                               reply_timeout=p.reply_timeout)  # fmt: skip
    return summarize(address, echoes)
