"""The result model: what one probe run produced, and its CBOR round trip.

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

No I/O and no clock reads here.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import cbor2

SCHEMA_VERSION = 1
"""Version of the encoded form; :func:`decode_result` rejects versions it does not know."""

Family = Literal[4, 6]
"""An IP address family: 4 or 6."""


class ResultDecodeError(ValueError):
    """Bytes or a mapping are not a valid encoded result; the message says which part is wrong."""


# --------------------------------------------------------------------------------------------
# Payloads (fields of the original specification first; meshmon's additions after, defaulted).


@dataclass(frozen=True)
class PingResult:
    """A burst of ICMP echo requests to one address."""

    successes: int
    """Echo replies received in time."""
    failures: int
    """Echo requests without a reply in time (lost or answered by an error)."""
    success_latencies: tuple[float, ...]
    """Round-trip times of the replies, in ms, in the order the requests were sent."""
    errors: tuple[str, ...]
    """What went wrong (resolution, ICMP errors such as "host unreachable"), deduplicated."""
    avg_response_time_ms: float | None
    """Mean of ``success_latencies``; ``None`` when nothing answered."""
    resolved_ip: str | None
    """The address probed (``None`` when the name did not resolve)."""
    samples: tuple[float | None, ...] = ()
    """Per packet, in send order: RTT in ms, or ``None`` when that packet was lost."""

    def is_successful(self) -> bool:
        """At least one reply came back."""
        return self.successes > 0

    def response_time_ms(self) -> float | None:
        """The mean RTT."""
        return self.avg_response_time_ms

    def error_message(self) -> str | None:
        """Errors joined, or a loss summary when some packets got no answer."""
        if self.errors:
            return "; ".join(self.errors)
        if self.failures and not self.successes:
            return f"no reply to {self.failures} echo request(s)"
        return None

    @property
    def sent(self) -> int:
        """Echo requests sent."""
        return self.successes + self.failures

    @property
    def loss(self) -> float:
        """Fraction of requests without a reply (0.0-1.0; 1.0 when nothing was sent)."""
        return self.failures / self.sent if self.sent else 1.0

    @property
    def min_ms(self) -> float | None:
        """Fastest reply."""
        return min(self.success_latencies) if self.success_latencies else None

    @property
    def max_ms(self) -> float | None:
        """Slowest reply."""
        return max(self.success_latencies) if self.success_latencies else None

    @property
    def median_ms(self) -> float | None:
        """Median RTT."""
        return statistics.median(self.success_latencies) if self.success_latencies else None

    @property
    def stddev_ms(self) -> float | None:
        """Population standard deviation of the RTTs (0.0 for one reply)."""
        if not self.success_latencies:
            return None
        return statistics.pstdev(self.success_latencies)


@dataclass(frozen=True)
class TracerouteHop:
    """One TTL of an mtr-style trace, over all rounds."""

    ttl: int
    addresses: tuple[str, ...]
    """Every address that answered at this TTL (more than one under ECMP load balancing)."""
    sent: int
    received: int
    latencies_ms: tuple[float, ...]
    """RTT of each answer."""

    @property
    def loss(self) -> float:
        """Fraction of probes at this TTL without an answer."""
        return 1.0 - self.received / self.sent if self.sent else 1.0

    @property
    def avg_ms(self) -> float | None:
        """Mean RTT at this hop."""
        return statistics.fmean(self.latencies_ms) if self.latencies_ms else None


@dataclass(frozen=True)
class TracerouteResult:
    """An mtr-style trace: several rounds of TTL-limited probes."""

    hops: tuple[TracerouteHop, ...]
    target_reached: bool
    total_time_ms: float
    """Mean RTT to the target when reached, else the time the trace took."""
    errors: tuple[str, ...]
    protocol: str = "icmp"
    """``icmp``, ``udp`` or ``tcp``."""
    resolved_ip: str | None = None

    def is_successful(self) -> bool:
        """The target answered."""
        return self.target_reached

    def response_time_ms(self) -> float | None:
        """RTT to the target, when reached."""
        return self.total_time_ms if self.target_reached else None

    def error_message(self) -> str | None:
        """Errors joined, or why the target was not reached."""
        if self.errors:
            return "; ".join(self.errors)
        if not self.target_reached:
            return "target not reached"
        return None


@dataclass(frozen=True)
class TcpConnectResult:
    """A TCP three-way handshake."""

    connected: bool
    connect_time_ms: float | None
    error: str | None
    resolved_ip: str | None
    port: int = 0

    def is_successful(self) -> bool:
        """The handshake completed."""
        return self.connected

    def response_time_ms(self) -> float | None:
        """Time to established."""
        return self.connect_time_ms

    def error_message(self) -> str | None:
        """Why it did not connect."""
        return self.error


@dataclass(frozen=True)
class UdpConnectResult:
    """UDP datagrams sent, replies expected (echo responder or configured payload)."""

    probe_successful: bool
    response_time_ms_: float | None
    """Mean RTT of the replies (``response_time_ms`` when encoded; the ``_`` keeps the field
    from shadowing the method)."""
    error: str | None
    resolved_ip: str | None
    port: int = 0
    sent: int = 0
    received: int = 0
    latencies_ms: tuple[float, ...] = ()
    jitter_ms: float | None = None
    """Mean absolute difference between consecutive RTTs (RFC 3550 style, unsmoothed)."""

    def is_successful(self) -> bool:
        """At least one reply came back."""
        return self.probe_successful

    def response_time_ms(self) -> float | None:
        """Mean RTT."""
        return self.response_time_ms_

    def error_message(self) -> str | None:
        """Why no reply came back."""
        return self.error


@dataclass(frozen=True)
class HttpGetResult:
    """An HTTP GET and its validation."""

    status_code: int | None
    response_time_ms_: float | None
    """Time to the complete response (named with ``_`` so it does not shadow the method)."""
    response_size_bytes: int | None
    error: str | None
    success: bool
    url: str = ""
    final_url: str = ""
    redirects: int = 0
    connect_time_ms: float | None = None
    """Time until the connection (TCP, and TLS for https) was established."""
    first_byte_ms: float | None = None
    """Time until the response headers arrived."""

    def is_successful(self) -> bool:
        """Status and body matched the expectations."""
        return self.success

    def response_time_ms(self) -> float | None:
        """Time to the complete response."""
        return self.response_time_ms_

    def error_message(self) -> str | None:
        """Transport error or the failed validation."""
        return self.error


@dataclass(frozen=True)
class PluginResult:
    """What a probe plugin returned (see :mod:`meshmon.probes.plugin`)."""

    plugin_name: str
    plugin_version: str
    success: bool
    response_time_ms_: float | None
    error: str | None
    data: dict[str, Any] = field(default_factory=dict)
    """Plugin-specific values; must be CBOR-encodable (str keys, plain values)."""

    def __hash__(self) -> int:
        return hash((self.plugin_name, self.plugin_version, self.success, self.error))

    def is_successful(self) -> bool:
        """As the plugin said."""
        return self.success

    def response_time_ms(self) -> float | None:
        """As the plugin said."""
        return self.response_time_ms_

    def error_message(self) -> str | None:
        """As the plugin said, or the engine's reason (raised, timed out)."""
        return self.error


@dataclass(frozen=True)
class TlsCertResult:
    """The certificate a TLS server presented (meshmon's addition to the specification).

    The certificate is read even when verification fails; ``verified`` and
    ``verify_error`` say whether and why not.
    """

    handshake_ok: bool
    """A TLS handshake completed (with or without verification)."""
    verified: bool
    verify_error: str | None
    subject: str | None
    issuer: str | None
    not_before: float | None
    """Unix seconds."""
    not_after: float | None
    days_to_expiry: float | None
    """Days from the probe's start to ``not_after`` (negative once expired)."""
    handshake_time_ms: float | None
    error: str | None
    resolved_ip: str | None
    san: tuple[str, ...] = ()
    tls_version: str | None = None
    min_days: float = 0.0
    """The check's warning threshold: success needs ``days_to_expiry >= min_days``."""

    def is_successful(self) -> bool:
        """Verified, and not expiring within ``min_days``."""
        return (
            self.handshake_ok
            and self.verified
            and self.days_to_expiry is not None
            and self.days_to_expiry >= self.min_days
        )

    def response_time_ms(self) -> float | None:
        """Time to handshake completion."""
        return self.handshake_time_ms

    def error_message(self) -> str | None:
        """Transport error, verification failure, or an expiry warning."""
        if self.error:
            return self.error
        if not self.verified:
            return f"certificate not verified: {self.verify_error}"
        if self.days_to_expiry is not None and self.days_to_expiry < self.min_days:
            return f"certificate expires in {self.days_to_expiry:.1f} days (< {self.min_days})"
        return None


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


# --------------------------------------------------------------------------------------------
# Encoding.


def to_dict(record: MonitoringResult) -> dict[str, Any]:
    """A plain mapping (JSON- and CBOR-friendly: lists for tuples) of a result."""
    if type(record) not in VARIANTS.values():
        raise TypeError(f"{type(record).__name__} is not a MonitoringResult variant")
    data: dict[str, Any] = {"v": SCHEMA_VERSION, "kind": record.KIND}
    for f in dataclasses.fields(record):
        data[_wire(f.name)] = _plain(getattr(record, f.name))
    return data


def _wire(name: str) -> str:
    """Encoded key of a field: ``response_time_ms_`` is ``response_time_ms`` on the wire.

    (The trailing ``_`` only keeps the field from shadowing the method in Python.)
    """
    return name.removesuffix("_")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_wire(f.name): _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def encode_result(record: MonitoringResult) -> bytes:
    """Encode a result as CBOR."""
    return bytes(cbor2.dumps(to_dict(record)))


def decode_result(data: bytes) -> MonitoringResult:
    """Decode CBOR from :func:`encode_result`.

    Raises:
        ResultDecodeError: for any malformed input (not CBOR, wrong shape, unknown kind or
            version, a field of the wrong type, trailing bytes).
    """
    try:
        obj = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types (and ValueError/TypeError inside)
        raise ResultDecodeError(f"not valid CBOR: {exc}") from exc
    return from_dict(obj)


def from_dict(obj: Any) -> MonitoringResult:
    """Build a result from :func:`to_dict`'s mapping, checking every field.

    Raises:
        ResultDecodeError: when anything is missing, unknown or of the wrong type.
    """
    if not isinstance(obj, dict):
        raise ResultDecodeError(f"a result must be a map, not {type(obj).__name__}")
    obj = dict(obj)
    version = obj.pop("v", None)
    if version != SCHEMA_VERSION:
        raise ResultDecodeError(f"unknown schema version {version!r} (this build reads "
                                f"{SCHEMA_VERSION}); upgrade meshmon")  # fmt: skip
    kind = obj.pop("kind", None)
    cls = VARIANTS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ResultDecodeError(f"unknown result kind {kind!r}; expected one of {sorted(VARIANTS)}")
    return typing.cast(MonitoringResult, _build(cls, obj, kind))


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _build(cls: type, obj: Any, path: str) -> Any:
    if not isinstance(obj, dict):
        raise ResultDecodeError(f"{path}: expected a map, got {type(obj).__name__}")
    hints = _hints(cls)
    names = {_wire(f.name) for f in dataclasses.fields(cls)}
    unknown = set(obj) - names
    if unknown:
        raise ResultDecodeError(f"{path}: unknown field(s) {sorted(map(str, unknown))}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = _wire(f.name)
        if key not in obj:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ResultDecodeError(f"{path}.{key}: missing")
            continue
        kwargs[f.name] = _check(hints[f.name], obj[key], f"{path}.{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ResultDecodeError(f"{path}: {exc}") from exc


def _check(hint: Any, value: Any, path: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in get_args(hint):
            try:
                return _check(option, value, path)
            except ResultDecodeError:
                continue
        raise ResultDecodeError(f"{path}: {value!r} matches none of {hint}")
    if origin is Literal:
        if value in get_args(hint) and not isinstance(value, bool):
            return value
        raise ResultDecodeError(f"{path}: {value!r} is not one of {get_args(hint)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ResultDecodeError(f"{path}: expected an array, got {type(value).__name__}")
        item = get_args(hint)[0]
        return tuple(_check(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ResultDecodeError(f"{path}: expected a map with text keys")
        return dict(value)
    if hint is type(None):
        if value is None:
            return None
        raise ResultDecodeError(f"{path}: expected null")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ResultDecodeError(f"{path}: expected a boolean, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ResultDecodeError(f"{path}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ResultDecodeError(f"{path}: expected a finite number, got {value!r}")
            return float(value)
        raise ResultDecodeError(f"{path}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ResultDecodeError(f"{path}: expected text, got {type(value).__name__}")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    raise ResultDecodeError(f"{path}: cannot decode type {hint}")  # pragma: no cover
