"""The only code that touches sockets: mTLS TCP streams and (later) the UDP endpoint."""

from meshmon.net.tls import (
    MeshConnectionError,
    MtlsStream,
    PeerRejectedError,
    connect_mtls,
    serve_mtls,
)

__all__ = ["MeshConnectionError", "MtlsStream", "PeerRejectedError", "connect_mtls", "serve_mtls"]
