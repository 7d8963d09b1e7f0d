"""A result's summary: kind, success, RTT, loss, error (the aggregator's derived columns).

Theory of operation
-------------------
Every synced record carries its result as the agent stored it (CBOR from
:func:`meshmon.results.codec.encode_result`). The aggregator's database keeps those bytes as
they are and, beside them, the handful of values that queries and rollups filter and aggregate
on. The agent derives them when it reads its records for an upload (protocol version 2,
:mod:`meshmon.wire.columns`); the aggregator derives them itself for a version 1 body.

:func:`meshmon.results.codec.decode_result` checks every field of a record and builds every
nested object: about 60 µs for a ping result, which would cap ingest at ~16 k rows/s on one core
where PostgreSQL's COPY takes ~500 k. :func:`summarize` takes the fast road for the compact form
``[2, kind, envelope..., payload]``: one C-level ``cbor2.loads``, then the payload's fields are
set on a bare instance of the model's own payload class and the model's own methods
(``is_successful``, ``response_time_ms``, ``error_message``, ``PingResult.loss``) answer, so
the rules live in one place. Whatever looks unusual (the map form, an older shorter array, a
value of the wrong type, an exception) goes the slow road through ``decode_result``, which
either answers or raises :class:`~meshmon.results.ResultDecodeError` naming the problem. The
values returned are type-checked either way, so a malformed record never reaches COPY.
``strict=True`` always takes the slow road (every field checked).

Loss is the fraction of probes lost: ``failures / sent`` for ping, 0 or 1 for other kinds.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

import cbor2

from meshmon.results import VARIANTS, MonitoringResult, PingResult, ResultDecodeError
from meshmon.results.codec import COMPACT_VERSION, decode_result

Summary = tuple[str, bool, float | None, float, str | None]
"""``(kind, success, rtt_ms, loss, error)``."""


def _plan() -> tuple[dict[str, tuple[type, tuple[str, ...]]], int]:
    """Per kind: the payload class and its field names; and the payload's index in the array."""
    plan: dict[str, tuple[type, tuple[str, ...]]] = {}
    index = -1
    for kind, cls in VARIANTS.items():
        names = [f.name for f in dataclasses.fields(cls)]
        where = names.index("result")
        if index not in (-1, where):  # pragma: no cover - the envelope is shared
            raise RuntimeError("result variants disagree on the payload's position")
        index = where
        payload = typing.get_type_hints(cls)["result"]
        if "__slots__" in vars(payload):
            continue  # pragma: no cover - slotted payloads take the slow road
        plan[kind] = (payload, tuple(f.name for f in dataclasses.fields(payload)))
    return plan, index + 2


_PLAN, _PAYLOAD_AT = _plan()
_PING_FIELDS = _PLAN["ping"][1]
_SUCC, _FAIL, _ERRS, _AVG = (_PING_FIELDS.index(n) for n in
                             ("successes", "failures", "errors", "avg_response_time_ms"))
_PING_LEN = len(_PING_FIELDS)


def summarize(payload: bytes, *, strict: bool = False) -> Summary:
    """The derived columns of one stored result.

    Raises:
        ResultDecodeError: the bytes are not a valid result (the message says what is wrong).
    """
    if not strict:
        answer = fast(payload)
        if answer is not None:
            return answer
    record = decode_result(payload)
    summary = _from_record(record)
    if summary is None:  # pragma: no cover - decode_result checked every type
        raise ResultDecodeError(f"{record.kind}: the result's values have unexpected types")
    return summary


def fast(payload: bytes) -> Summary | None:
    """The fast road alone: the summary, or None where :func:`summarize` must decide."""
    try:
        obj = cbor2.loads(payload)
        if type(obj) is not list or len(obj) <= _PAYLOAD_AT or obj[0] != COMPACT_VERSION:
            return None
        kind = obj[1]
        plan = _PLAN.get(kind) if type(kind) is str else None
        values = obj[_PAYLOAD_AT]
        if plan is None or len(obj) != _PAYLOAD_AT + 1 or type(values) is not list:
            return None
        if kind == "ping" and len(values) == _PING_LEN:
            # The commonest record, answered without building an object (PingResult's rules:
            # success is a reply; the error is None without errors unless nothing answered).
            ok, lost, errors, rtt = values[_SUCC], values[_FAIL], values[_ERRS], values[_AVG]
            if (type(ok) is int and type(lost) is int and ok >= 0 and lost >= 0
                    and type(errors) is list and not errors and (ok or not lost)
                    and (rtt is None or (type(rtt) is float and math.isfinite(rtt)))):
                sent = ok + lost
                return "ping", ok > 0, rtt, lost / sent if sent else 1.0, None
        cls, names = plan
        if len(values) != len(names):
            return None  # an older record (defaults to fill) or a newer one: the slow road
        result: Any = object.__new__(cls)
        result.__dict__.update(zip(names, values, strict=True))
        return _checked(kind, result)
    except Exception:
        return None  # whatever went wrong, the slow road says it properly


def _from_record(record: MonitoringResult) -> Summary | None:
    return _checked(record.kind, record.result)


def _checked(kind: str, result: Any) -> Summary | None:
    success = result.is_successful()
    rtt = result.response_time_ms()
    error = result.error_message()
    if type(success) is not bool or not (error is None or type(error) is str):
        return None
    if rtt is not None:
        if type(rtt) is int:
            rtt = float(rtt)
        if type(rtt) is not float or not math.isfinite(rtt):
            return None
    if type(result) is PingResult:
        if type(result.successes) is not int or type(result.failures) is not int:
            return None
        if result.successes < 0 or result.failures < 0:
            return None
        loss = result.loss
    else:
        loss = 0.0 if success else 1.0
    if error is not None and "\x00" in error:
        error = error.replace("\x00", "\N{REPLACEMENT CHARACTER}")  # PostgreSQL text has no NUL
    return kind, success, rtt, loss, error
