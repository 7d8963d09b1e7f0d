"""``tcp``: time to an established TCP connection → :class:`TcpConnectResult`.

Params: ``port`` (or ``host:port`` in the target), ``family``.
"""

from __future__ import annotations

import errno
import socket
import time

import trio

from meshmon.probes.params import FAMILY, PORT, ParamSchema, host_port_target
from meshmon.results import TcpConnectResult

PARAMS = ParamSchema(params={"port": PORT, "family": FAMILY},
                     target=host_port_target(lambda params: None))
"""What a ``tcp`` check accepts: ``host:port`` targets, or hosts and ``params.port``."""

_ERRORS = {
    errno.ECONNREFUSED: "connection refused (nothing listens on that port, or a firewall "
                        "rejects)",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable (no route)",
    errno.ETIMEDOUT: "timed out in the kernel",
    errno.ECONNRESET: "connection reset",
}  # fmt: skip


def connect_error_text(exc: OSError) -> str:
    """Operator-readable text for a failed connect."""
    return _ERRORS.get(exc.errno or 0, f"connect failed: {exc.strerror or exc}")


async def tcp_connect(address: str, family: int, port: int, wait: float) -> TcpConnectResult:
    """Connect once; the socket is closed right after the handshake."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    sock = trio.socket.socket(af, socket.SOCK_STREAM)
    t0 = time.monotonic()
    try:
        with trio.move_on_after(wait) as scope:
            await sock.connect((address, port))
        if scope.cancelled_caught:
            return TcpConnectResult(False, None, f"timed out after {wait:g}s (no answer: host "
                                    "down or packets dropped)", address, port)  # fmt: skip
        return TcpConnectResult(True, (time.monotonic() - t0) * 1000, None, address, port)
    except OSError as exc:
        return TcpConnectResult(False, None, connect_error_text(exc), address, port)
    finally:
        sock.close()
