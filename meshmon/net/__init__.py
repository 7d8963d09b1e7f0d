"""The only code that touches sockets: mTLS TCP streams, sealed UDP, the mesh transport.

The in-memory transport (:mod:`.memory`, for tests and the simulator) is re-exported lazily
(PEP 562): an agent never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshmon.net.admission import Admission
from meshmon.net.frames import FrameError
from meshmon.net.tls import (
    ListenError,
    MeshConnectionError,
    MtlsStream,
    PeerRejectedError,
    connect_mtls,
    serve_mtls,
)
from meshmon.net.transport import (
    PURPOSE_ECHO,
    PURPOSE_MEMBERSHIP,
    Datagram,
    MeshTransport,
    PeerUnreachableError,
    RemoteError,
    RequestHandler,
    Transport,
    TransportConfig,
    TransportError,
    open_transport,
)

if TYPE_CHECKING:
    from meshmon.net.memory import MemoryNetwork, MemoryTransport


def __getattr__(name: str) -> Any:
    if name in ("MemoryNetwork", "MemoryTransport"):
        from meshmon.net import memory

        return getattr(memory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PURPOSE_ECHO",
    "PURPOSE_MEMBERSHIP",
    "Admission",
    "Datagram",
    "FrameError",
    "ListenError",
    "MemoryNetwork",
    "MemoryTransport",
    "MeshConnectionError",
    "MeshTransport",
    "MtlsStream",
    "PeerRejectedError",
    "PeerUnreachableError",
    "RemoteError",
    "RequestHandler",
    "Transport",
    "TransportConfig",
    "TransportError",
    "connect_mtls",
    "open_transport",
    "serve_mtls",
]
