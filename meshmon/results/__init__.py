"""The result model: what one probe run produced, and its CBOR round trip.

:mod:`~meshmon.results.model` holds the envelope and its variants (and the theory of
operation); one module per payload kind; :mod:`~meshmon.results.stats` the latency statistics;
:mod:`~meshmon.results.codec` the checked CBOR round trip. No I/O and no clock reads anywhere.
"""

from meshmon.results.codec import (
    COMPACT_VERSION,
    SCHEMA_VERSION,
    ResultDecodeError,
    decode_result,
    encode_result,
    from_dict,
    to_dict,
)
from meshmon.results.connect import TcpConnectResult, UdpConnectResult
from meshmon.results.model import (
    VARIANTS,
    Family,
    HttpGet,
    MonitoringResult,
    Payload,
    Ping,
    Plugin,
    TcpConnect,
    TlsCertificate,
    Traceroute,
    UdpConnect,
)
from meshmon.results.ping import PingResult
from meshmon.results.plugin import PluginResult
from meshmon.results.trace import TracerouteHop, TracerouteResult
from meshmon.results.web import HttpGetResult, TlsCertResult

__all__ = [
    "COMPACT_VERSION", "SCHEMA_VERSION", "VARIANTS", "Family", "HttpGet", "HttpGetResult",
    "MonitoringResult",
    "Payload", "Ping", "PingResult", "Plugin", "PluginResult", "ResultDecodeError", "TcpConnect",
    "TcpConnectResult", "TlsCertResult", "TlsCertificate", "Traceroute", "TracerouteHop",
    "TracerouteResult", "UdpConnect", "UdpConnectResult", "decode_result", "encode_result",
    "from_dict", "to_dict",
]  # fmt: skip
