"""The only code that touches sockets: mTLS TCP streams, sealed UDP, the mesh transport."""

from meshmon.net.admission import Admission
from meshmon.net.frames import FrameError
from meshmon.net.memory import MemoryNetwork, MemoryTransport
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
