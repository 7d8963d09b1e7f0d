"""Many targets of one check at once: what the agent's scheduler runs every tick.

Theory of operation
-------------------
The scheduler hands over, per tick (100 ms), the targets of a check that fell due together. For
``ping`` the whole batch goes out through one :meth:`~meshmon.probes.icmp.IcmpEngine.ping_many`
call: one task, one wake-up and one socket for all of them, which is what keeps an agent near
a C pinger's cost per probe. Other kinds (and ``family = "both"``) run their targets
concurrently through :func:`~meshmon.probes.registry.run_probe`.

:func:`run_probe_batch_encoded` is the agent's path: the same run, with each result returned in
its stored form. A ping batch's results are then written straight from the echoes
(:func:`~meshmon.results.encoded.ping_result`) without building result objects, the largest
per-probe cost left once the engine batched the sends.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from meshmon import results as r
from meshmon.probes import base
from meshmon.probes.base import ProbeContext, ProbeError, ResolveError, Stopwatch
from meshmon.probes.icmp import Echo
from meshmon.probes.ping import PingParams, outcome, summarize
from meshmon.probes.registry import (
    ProbeRegistry,
    check_params,
    error_payload,
    make_record,
    run_probe,
)
from meshmon.results.encoded import EncodedResult, encoded, ping_result


async def run_probe_batch(kind: str, targets: Sequence[str], params: Mapping[str, Any],
                          timeout: float,  # noqa: ASYNC109 - expiry gives error results
                          context: ProbeContext, registry: ProbeRegistry | None = None,
                          ) -> list[list[r.MonitoringResult]]:  # fmt: skip
    """Run one check against many targets at once; results per target, in order.

    Same contract as :func:`run_probe`. For ``ping`` the whole batch goes out in one
    :meth:`~meshmon.probes.icmp.IcmpEngine.ping_many` call — one task and one wake-up instead of
    one per target. Other kinds run their targets concurrently. A scheduler should hand over,
    per tick, the targets of a check that fall due together (the agent uses
    :func:`run_probe_batch_encoded`, the same run with results in their stored form).
    """
    if not _pings_together(kind, params, context):
        out: list[list[r.MonitoringResult]] = [[] for _ in targets]

        async def single(i: int, target: str) -> None:
            out[i] = await run_probe(kind, target, params, timeout, context, registry)

        async with trio.open_nursery() as nursery:
            for i, target in enumerate(targets):
                nursery.start_soon(single, i, target)
        return out
    sw, outcomes = await _ping_batch(targets, params, timeout, context)
    out = []
    for target, o in zip(targets, outcomes, strict=True):
        if isinstance(o, tuple):
            out.append([make_record(kind, context, target, o[0], sw, summarize(o[1], o[2]))])
        else:
            out.append([make_record(kind, context, target, None, sw, error_payload(kind, o, None))])
    return out


async def run_probe_batch_encoded(kind: str, targets: Sequence[str], params: Mapping[str, Any],
                                  timeout: float,  # noqa: ASYNC109 - expiry gives error results
                                  context: ProbeContext, registry: ProbeRegistry | None = None,
                                  *, record_as: Sequence[str] | None = None,
                                  ) -> list[list[EncodedResult]]:  # fmt: skip
    """:func:`run_probe_batch` with each result in its stored form (compact CBOR).

    What the agent runs, 1000 times a second on a busy host: a ``ping`` batch's results are
    written straight from the echoes (:func:`~meshmon.results.encoded.ping_result`, the same
    bytes :func:`~meshmon.results.encode_result` gives for the objects), without building the
    objects. Other kinds are run and encoded as usual.

    Args:
        record_as: the target recorded for each one (default: the target itself); the agent
            records a mesh target's name while it probes its address.
    """
    names = targets if record_as is None else record_as
    if not _pings_together(kind, params, context):
        rows = await run_probe_batch(kind, targets, params, timeout, context, registry)
        return [[encoded(x if x.target == name else dataclasses.replace(x, target=name))
                 for x in row] for row, name in zip(rows, names, strict=True)]  # fmt: skip
    sw, outcomes = await _ping_batch(targets, params, timeout, context)
    agent, check, started = context.agent, context.check, sw.started_at
    duration = sw.elapsed_ms()
    out: list[list[EncodedResult]] = []
    for name, o in zip(names, outcomes, strict=True):
        if isinstance(o, tuple):
            family, address, echoes = o
            samples, errors = outcome(echoes)
            out.append([ping_result(agent, check, name, family, started, duration, address,
                                    samples, errors)])  # fmt: skip
        else:
            out.append([encoded(make_record(kind, context, name, None, sw,
                                            error_payload(kind, o, None)))])  # fmt: skip
    return out


def _pings_together(kind: str, params: Mapping[str, Any], context: ProbeContext) -> bool:
    """Whether a batch of ``kind`` goes out through one ``ping_many`` call."""
    return (kind == "ping" and context.icmp is not None
            and base.family_choice_or_none(params) != "both")  # fmt: skip


async def _ping_batch(targets: Sequence[str], params: Mapping[str, Any],
                      timeout: float,  # noqa: ASYNC109 - expiry gives error results
                      context: ProbeContext,
                      ) -> tuple[Stopwatch, list[tuple[int, str, list[Echo]] | str]]:  # fmt: skip
    """Ping every target in one ``ping_many`` call: per target ``(family, address, echoes)``,
    or why it was not pinged (bad params, a name that does not resolve)."""
    assert context.icmp is not None
    sw = Stopwatch()
    setup = _ping_setup(params, timeout)
    if isinstance(setup, str):
        return sw, [setup] * len(targets)
    choice, pp = setup
    resolved: list[tuple[int, str] | str] = []
    for target in targets:
        try:
            family, address = _literal_target(target)
            if not family or choice not in ("auto", str(family)):  # a name, or a mismatch
                host, _ = base.split_host_port(target, None)
                family, name_address, why = (await base.resolve(host, choice))[0]
                if name_address is None:
                    raise ResolveError(why or "no address")
                address = name_address
            resolved.append((family, address))
        except ProbeError as exc:
            resolved.append(str(exc))
    batch = [(x[1], x[0]) for x in resolved if isinstance(x, tuple)]
    rows = iter(await context.icmp.ping_many(batch, count=pp.count, interval=pp.interval,
                                             reply_timeout=pp.reply_timeout))  # fmt: skip
    out: list[tuple[int, str, list[Echo]] | str] = []
    for x in resolved:
        out.append((x[0], x[1], next(rows)) if isinstance(x, tuple) else x)
    return sw, out


_Setup = tuple[base.FamilyChoice, PingParams] | str
"""A ping check's family choice and parsed params, or why they are wrong."""


def _ping_setup(params: Mapping[str, Any], timeout: float) -> _Setup:
    """The family choice and parsed params of a ping check, or why they are wrong.

    Validated once per distinct ``(params, timeout)``, not on every tick: the checks walk the
    param schema, which costs more than a batch's share of a tick.
    """
    try:  # with the types: 1, 1.0 and True are equal keys but not equally valid params
        key = (tuple(sorted((k, type(v), v) for k, v in params.items())), timeout)
        hash(key)
    except TypeError:  # an unhashable value (or key): validate as it comes
        return _validate_ping(params, timeout)
    return _validated_ping(key)


@functools.lru_cache(maxsize=256)
def _validated_ping(key: tuple[tuple[tuple[str, type, Any], ...], float]) -> _Setup:
    return _validate_ping({k: v for k, _, v in key[0]}, key[1])


def _validate_ping(params: Mapping[str, Any], timeout: float) -> _Setup:
    try:
        check_params("ping", params, timeout)
        return base.family_choice(params), PingParams.from_params(params, timeout)
    except ProbeError as exc:
        return str(exc)


@functools.lru_cache(maxsize=65536)
def _literal_target(target: str) -> tuple[int, str]:
    """``(family, address)`` of a target that is an IP literal (with or without a port), else
    ``(0, "")``: names resolve every time, and bad syntax is reported by the full path."""
    try:
        host, _ = base.split_host_port(target, None)
    except ProbeError:
        return 0, ""
    return base.literal_address(host)
