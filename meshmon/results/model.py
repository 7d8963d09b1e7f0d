"""The result envelope and its variants: what one probe run produced.

Theory of operation
-------------------
A :class:`MonitoringResult` is one of the variants :class:`Ping`, :class:`Traceroute`,
:class:`TcpConnect`, :class:`UdpConnect`, :class:`HttpGet`, :class:`Plugin` and
:class:`TlsCertificate` (the last one is meshmon's addition for the TLS certificate check).
Each variant carries the same envelope — who measured (``agent``), for which check, which
target, the address family used, when it started (wall clock) and how long it took (monotonic
clock) — and one payload object with the fields of the original specification
(:class:`PingResult`, :class:`TracerouteResult`, ...). ``match`` works on both levels::

    match record:
        case Ping(result=PingResult(successes=n)): ...

The rules it keeps:

* Every variant answers ``is_successful()``, ``response_time_ms()`` and ``error_message()``
  (``None`` when there is nothing to say).
* Times: ``started_at`` is Unix seconds from the wall clock, for humans and for joining with
  other data; every duration is measured with the monotonic clock, so a clock step can never make
  one negative or absurd. Latencies are milliseconds as floats.
* ``seq`` is ``None`` until the store accepts the record and assigns its sequence number
  (``dataclasses.replace(record, seq=n)``).
* Everything is frozen and made of plain values (tuples, not lists), so records can be shared
  between tasks and hashed.
* :func:`encode_result` / :func:`decode_result` round-trip every variant through CBOR (a map
  with a schema version ``v``); :func:`decode_result` checks every field and raises
  :class:`ResultDecodeError` — and only that — for any malformed input.

No I/O and no clock reads here. Encoding lives in :mod:`meshmon.results.codec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from meshmon.results.connect import TcpConnectResult, UdpConnectResult
from meshmon.results.ping import PingResult
from meshmon.results.plugin import PluginResult
from meshmon.results.trace import TracerouteResult
from meshmon.results.web import HttpGetResult, TlsCertResult

Family = Literal[4, 6]
"""An IP address family: 4 or 6."""

Payload = (
    PingResult | TracerouteResult | TcpConnectResult | UdpConnectResult | HttpGetResult
    | PluginResult | TlsCertResult
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Envelope and variants.


@dataclass(frozen=True, kw_only=True)
class MonitoringResult:
    """One probe run: the envelope shared by all variants. Use a variant class, not this one."""

    KIND: ClassVar[str] = ""
    agent: str
    """Name of the node that measured."""
    check: str
    """Name of the check (``CheckConfig.name``; ad-hoc CLI probes use ``cli``)."""
    target: str
    """The target as configured (host, ``host:port`` or URL)."""
    family: Family | None
    """Address family actually used; ``None`` when nothing was sent (name did not resolve)."""
    started_at: float
    """Wall-clock Unix seconds when the probe started."""
    duration_ms: float
    """Monotonic time the whole probe took, including timeouts."""
    seq: int | None = None
    """Sequence number assigned by the store; ``None`` before it is stored."""
    result: Payload

    @property
    def kind(self) -> str:
        """The variant tag (``ping``, ``trace``, ``tcp``, ``udp``, ``http``, ``plugin``...)."""
        return self.KIND

    def is_successful(self) -> bool:
        """Whether the probe succeeded (per the payload's rule)."""
        return self.result.is_successful()

    def response_time_ms(self) -> float | None:
        """The payload's headline latency in ms, if any."""
        return self.result.response_time_ms()

    def error_message(self) -> str | None:
        """The payload's error, if any."""
        return self.result.error_message()


@dataclass(frozen=True, kw_only=True)
class Ping(MonitoringResult):
    """An ICMP echo burst."""

    KIND: ClassVar[str] = "ping"
    result: PingResult


@dataclass(frozen=True, kw_only=True)
class Traceroute(MonitoringResult):
    """An mtr-style trace."""

    KIND: ClassVar[str] = "trace"
    result: TracerouteResult


@dataclass(frozen=True, kw_only=True)
class TcpConnect(MonitoringResult):
    """A TCP connect."""

    KIND: ClassVar[str] = "tcp"
    result: TcpConnectResult


@dataclass(frozen=True, kw_only=True)
class UdpConnect(MonitoringResult):
    """A UDP request/reply."""

    KIND: ClassVar[str] = "udp"
    result: UdpConnectResult


@dataclass(frozen=True, kw_only=True)
class HttpGet(MonitoringResult):
    """An HTTP GET."""

    KIND: ClassVar[str] = "http"
    result: HttpGetResult


@dataclass(frozen=True, kw_only=True)
class Plugin(MonitoringResult):
    """A plugin probe."""

    KIND: ClassVar[str] = "plugin"
    result: PluginResult


@dataclass(frozen=True, kw_only=True)
class TlsCertificate(MonitoringResult):
    """A TLS certificate check."""

    KIND: ClassVar[str] = "tls"
    result: TlsCertResult


VARIANTS: dict[str, type[MonitoringResult]] = {
    cls.KIND: cls for cls in (Ping, Traceroute, TcpConnect, UdpConnect, HttpGet, Plugin,
                              TlsCertificate)
}  # fmt: skip
"""Variant class by kind tag."""
