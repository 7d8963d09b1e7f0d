"""Results written in their stored form without building their objects: the agent's hot path.

Theory of operation
-------------------
An agent pinging 1000 targets a second stores 1000 results a second. Building each one as
objects (a :class:`~meshmon.results.PingResult` computing its statistics, a
:class:`~meshmon.results.Ping` envelope, both frozen dataclasses), then walking them for the
compact CBOR form and encoding that with ``cbor2`` cost ~17 us per result, more than sending
and receiving the echo. :func:`encode_ping` writes the very same bytes straight from the RTTs
with a few precompiled ``struct`` formats (~1 us): what every run of a target writes alike (the
envelope's version, kind, agent, check, target and family, and the address) is encoded once and
cached, the common bursts of one request (answered, or lost) have a fixed layout, and any other
burst goes through a small general writer. The statistics come from
:mod:`meshmon.results.stats`, the functions :class:`PingResult` uses, so
:func:`~meshmon.results.decode_result` gives equal values; ``tests/test_results_encoded.py``
checks the bytes against :func:`~meshmon.results.encode_result` over many bursts.

:class:`EncodedResult` carries such bytes with the fields the store indexes them by and the
few that alert rules read (:func:`ping_result` makes one); :func:`stored_value` is the payload
the agent stores per result (the CBOR of ``[encoded result, degraded]``), also written
without ``cbor2``.

Only what CBOR needs here is written by hand: unsigned integers, text, arrays, doubles (``cbor2``
writes every float as a double) and null; anything else goes to ``cbor2``.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import cbor2

from meshmon.results import stats
from meshmon.results.codec import COMPACT_VERSION, decode_result, encode_result
from meshmon.results.model import MonitoringResult, Ping


class EncodedResult(NamedTuple):
    """A result in its stored form (compact CBOR, as :func:`~meshmon.results.encode_result`),
    with the few values read from it while it is fresh (alert rules) without decoding it."""

    kind: str
    """The variant tag (``ping``...)."""
    check: str
    """The check's name."""
    started_at: float
    """Wall-clock Unix seconds when the probe started (the store's timestamp)."""
    data: bytes
    """The compact CBOR of the whole result."""
    success: bool
    """``is_successful()`` of the result."""
    response_time_ms: float | None
    """``response_time_ms()`` of the result."""
    loss_pct: float | None = None
    """A ping's ``loss_pct`` (``None`` for other kinds)."""
    summary: int = 0
    """A ping's :func:`summary word <ping_summary>` (0: none), stored beside the result with
    ``response_time_ms`` so that an upload has its outcome and RTT without parsing it."""

    def stored(self, degraded: bool) -> tuple[bytes, tuple[int, float] | None]:
        """The payload the agent stores (:func:`stored_value`) and its summary (``None``: none)."""
        rtt = self.response_time_ms
        return stored_value(self.data, degraded), (
            (self.summary, math.nan if rtt is None else rtt) if self.summary else None)

    def decode(self) -> MonitoringResult:
        """The result as objects (checked, as any stored record)."""
        return decode_result(self.data)


def encoded(record: MonitoringResult) -> EncodedResult:
    """A result built as objects, in its stored form."""
    if not isinstance(record, Ping):
        return EncodedResult(record.kind, record.check, record.started_at, encode_result(record),
                             record.is_successful(), record.response_time_ms())  # fmt: skip
    p = record.result
    return EncodedResult(record.kind, record.check, record.started_at, encode_result(record),
                         record.is_successful(), record.response_time_ms(), p.loss_pct,
                         ping_summary(p.successes, p.failures, p.errors))  # fmt: skip


def ping_result(agent: str, check: str, target: str, family: int | None, started_at: float,
                duration_ms: float, address: str | None, samples: Sequence[float | None],
                errors: Sequence[str] = ()) -> EncodedResult:  # fmt: skip
    """A ``ping`` result in its stored form, straight from its RTTs (see :func:`encode_ping`)."""
    data = encode_ping(agent, check, target, family, started_at, duration_ms, address, samples,
                       errors)  # fmt: skip
    if len(samples) == 1:
        rtt = samples[0]
        ok = rtt is not None
        return EncodedResult("ping", check, started_at, data, ok, rtt, 0.0 if ok else 100.0,
                             ping_summary(int(ok), int(not ok), errors))
    rtts = [s for s in samples if s is not None]
    return EncodedResult("ping", check, started_at, data, bool(rtts),
                         sum(rtts) / len(rtts) if rtts else None,
                         stats.loss_pct(len(samples), len(rtts)),
                         ping_summary(len(rtts), len(samples) - len(rtts), errors))


_NULL = b"\xf6"
_DOUBLE = struct.Struct(">Bd")
_TIMES = struct.Struct(">BdBdB")
"""started_at, duration_ms, seq (null): the envelope after its cached head."""
_REPLY_1 = struct.Struct(">BdBdBBBBBBdBBd")
"""... seq, payload header (13 fields), successes 1, failures 0, [rtt], [], avg."""
_REPLY_1_TAIL = struct.Struct(">BBdBdBdBdBdBBd")
"""... samples [rtt], min, median, max, stddev 0.0, jitter null, loss 0.0."""
_LOST_1 = struct.Struct(">BdBdBBBBBBB")
"""... seq, payload header, successes 0, failures 1, [], [], avg null."""
_LOST_1_TAIL = bytes([0x81, 0xF6, 0xF6, 0xF6, 0xF6, 0xF6, 0xF6]) + _DOUBLE.pack(0xFB, 100.0)
"""samples [null], min..jitter null, loss 100.0."""
_PING_FIELDS = 13
"""Fields of :class:`~meshmon.results.PingResult` (the payload array's length)."""
_ENVELOPE_FIELDS = 10
"""Version, kind, then the 8 fields of the envelope (``result`` last)."""


def _head(major: int, n: int) -> bytes:
    """A CBOR item head: major type and unsigned argument, in the shortest form."""
    if n < 24:
        return bytes((major << 5 | n,))
    if n < 0x100:
        return struct.pack(">BB", major << 5 | 24, n)
    if n < 0x10000:
        return struct.pack(">BH", major << 5 | 25, n)
    if n < 0x100000000:
        return struct.pack(">BI", major << 5 | 26, n)
    return struct.pack(">BQ", major << 5 | 27, n)


def _item(value: Any) -> bytes:
    """One scalar as ``cbor2`` writes it."""
    cls = type(value)
    if cls is float:
        return _DOUBLE.pack(0xFB, value)
    if value is None:
        return _NULL
    if cls is str:
        text: bytes = value.encode()
        return _head(3, len(text)) + text
    if cls is int and value >= 0:
        return _head(0, value)
    return bytes(cbor2.dumps(value))


def _array(values: Sequence[Any]) -> bytes:
    return _head(4, len(values)) + b"".join(map(_item, values))


@functools.lru_cache(maxsize=65536)
def _constant_parts(agent: str, check: str, target: str, family: int | None,
                    address: str | None) -> tuple[bytes, bytes]:  # fmt: skip
    """What every run of one ping target writes alike: the array header and first fields of
    the envelope, and the address inside the payload."""
    head = _head(4, _ENVELOPE_FIELDS) + b"".join(
        map(_item, (COMPACT_VERSION, "ping", agent, check, target, family)))  # fmt: skip
    return head, _item(address)


def encode_ping(agent: str, check: str, target: str, family: int | None, started_at: float,
                duration_ms: float, address: str | None, samples: Sequence[float | None],
                errors: Sequence[str] = ()) -> bytes:  # fmt: skip
    """The compact CBOR of a ``ping`` result, byte for byte what
    ``encode_result(Ping(agent=agent, ..., result=PingResult(...)))`` writes.

    Args:
        samples: per request in send order, the RTT in ms (float) or ``None`` when lost.
        errors: the payload's ``errors`` (as :func:`meshmon.probes.ping.summarize` words them).
    """
    head, at = _constant_parts(agent, check, target, family, address)
    if len(samples) == 1 and not errors and type(started_at) is float \
            and type(duration_ms) is float:  # fmt: skip
        rtt = samples[0]
        if type(rtt) is float:
            return b"".join((
                head,
                _REPLY_1.pack(0xFB, started_at, 0xFB, duration_ms, 0xF6, 0x80 | _PING_FIELDS,
                              1, 0, 0x81, 0xFB, rtt, 0x80, 0xFB, rtt),
                at,
                _REPLY_1_TAIL.pack(0x81, 0xFB, rtt, 0xFB, rtt, 0xFB, rtt, 0xFB, rtt, 0xFB, 0.0,
                                   0xF6, 0xFB, 0.0),
            ))  # fmt: skip
        if rtt is None:
            return b"".join((
                head,
                _LOST_1.pack(0xFB, started_at, 0xFB, duration_ms, 0xF6, 0x80 | _PING_FIELDS,
                             0, 1, 0x80, 0x80, 0xF6),
                at,
                _LOST_1_TAIL,
            ))  # fmt: skip
    return b"".join((head, _item(started_at), _item(duration_ms), _NULL,
                     _ping_payload(address, samples, errors)))  # fmt: skip


def _ping_payload(address: str | None, samples: Sequence[float | None],
                  errors: Sequence[str]) -> bytes:  # fmt: skip
    """The payload array of any burst, with the statistics PingResult derives."""
    rtts = tuple(s for s in samples if s is not None)
    n = len(rtts)
    avg = sum(rtts) / n if rtts else None
    fields = (
        n, len(samples) - n, rtts, tuple(errors), avg, address, tuple(samples),
        min(rtts) if rtts else None, stats.median_ms(rtts), max(rtts) if rtts else None,
        stats.stddev_ms(rtts), stats.jitter_ms(rtts), stats.loss_pct(len(samples), n),
    )  # fmt: skip
    return _head(4, _PING_FIELDS) + b"".join(
        _array(f) if type(f) is tuple else _item(f) for f in fields)  # fmt: skip


_BOOL = {False: b"\xf4", True: b"\xf5"}


def stored_value(data: bytes, degraded: bool) -> bytes:
    """The payload the agent stores per result: the CBOR of ``[data, degraded]``, written
    directly (the same bytes as ``cbor2.dumps([data, degraded])``)."""
    return b"".join((b"\x82", _head(2, len(data)), data, _BOOL[bool(degraded)]))


def unstored(value: Any) -> tuple[bytes, bool]:
    """(data, degraded) of a stored value as decoded (see :func:`stored_value`).

    Raises:
        ValueError: it is not ``[data, degraded]``.
    """
    if type(value) is list and len(value) == 2 and type(value[0]) is bytes:
        return value[0], bool(value[1])
    raise ValueError("not a stored result ([result bytes, degraded])")


PING = 1 << 16
"""The kind bits of a ping's summary word."""


def ping_summary(successes: int, failures: int, errors: Sequence[str]) -> int:
    """The summary word the agent stores beside a ping result (the store's summary column,
    :mod:`meshmon.store.batch`, with the result's mean RTT beside it): :data:`PING` |
    successes << 8 | failures; 0 (none) if it has errors or 256 replies or losses or more.

    The outcome of such a result is a function of the two counts (:class:`PingResult`'s rules),
    so an upload (:mod:`meshmon.sync.build`) takes outcome and RTT of a run of records from
    the summary columns without parsing one; ``tests/test_sync_build.py`` checks that against
    the results themselves.
    """
    if errors or not 0 <= successes < 256 or not 0 <= failures < 256:
        return 0
    return PING | successes << 8 | failures
