"""The ``tcp`` and ``udp`` payloads: a connect, a datagram exchange."""

from __future__ import annotations

from dataclasses import dataclass


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
