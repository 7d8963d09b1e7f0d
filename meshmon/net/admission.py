"""Who knocks on the mTLS port without becoming a peer: classify, count, log rate-limited.

Theory of operation
-------------------
An agent's TCP port sees more than its peers: monitoring systems (and meshmon's own ``tcp``
checks) connect and close to see that it is up, port scanners connect and stay silent, and a
misdirected HTTP client speaks plain text. None of that is news for a log read by a person, and
an attacker must not be able to flood the log by opening connections.

Before the TLS handshake the server peeks at the first byte the client sends (without
consuming it). End of stream or a reset before any byte is a *connect-only check*: counted,
logged at DEBUG. Silence until the handshake deadline is an *idle* connection; a first byte
that cannot start a TLS record is *not TLS*; a handshake that starts but does not finish in
time is *slow*; a failed handshake or an unacceptable certificate is a *certificate* (or
*handshake*) rejection. Every kind is counted in :attr:`Admission.counts` (the agent's status
shows them) and, except connect-only checks, logged as a WARNING at most once per kind every
10 s, with a reason a person understands and how many similar ones were suppressed.
"""

from __future__ import annotations

import collections
import logging
import socket

import trio

from meshmon.logs import RateLimitedLog

log = logging.getLogger("meshmon.net.tls")
"""The TLS server's logger: these are its verdicts, found where operators already look."""

TLS_HANDSHAKE_RECORD = 0x16
"""The first byte of every TLS ClientHello (record type "handshake")."""

CONNECT_ONLY = "connect_only"
IDLE = "idle"
NOT_TLS = "not_tls"
SLOW = "slow_handshake"
CERTIFICATE = "certificate"
HANDSHAKE = "handshake"

_HINTS = {
    IDLE: "a client connected and sent nothing for {timeout:g}s (a port scanner or a stuck "
          "client), closed",
    NOT_TLS: "a client spoke something other than TLS ({detail}); only meshmon agents belong "
             "on this port",
    SLOW: "a TLS handshake did not finish within {timeout:g}s, closed",
    CERTIFICATE: "{detail}",
    HANDSHAKE: "TLS handshake failed: {detail}",
}  # fmt: skip


def _describe_first_byte(first: bytes) -> str:
    if first.isalpha():
        return f"it began with {first.decode()!r}, plain text such as HTTP"
    return f"its first byte was 0x{first[0]:02x}"


class Admission:
    """Counts and logs the connections the TLS server turned away, by kind (see module doc)."""

    def __init__(self, interval: float = 10.0) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        """Connections turned away by kind: connect_only, idle, not_tls, slow_handshake,
        certificate, handshake."""
        self._log = RateLimitedLog(log, interval)

    async def first_contact(self, tcp: trio.SocketStream) -> tuple[str, str] | None:
        """Peek at the client's first byte: None for TLS, else (kind, detail) to turn it away.

        Call inside the handshake deadline: a client that stays silent is cancelled there and
        the caller reports it as :data:`IDLE`.
        """
        try:
            first = await tcp.socket.recv(1, socket.MSG_PEEK)
        except OSError:  # reset before a byte: a connect-and-abort check
            return CONNECT_ONLY, ""
        if not first:
            return CONNECT_ONLY, ""
        if first[0] != TLS_HANDSHAKE_RECORD:
            return NOT_TLS, _describe_first_byte(first)
        return None

    def turn_away(self, kind: str, remote: tuple[str, int], *, timeout: float = 0.0,
                  detail: str = "") -> None:  # fmt: skip
        """Count a refused connection and log it (rate-limited; connect-only at DEBUG)."""
        self.counts[kind] += 1
        if kind == CONNECT_ONLY:
            log.debug("connect-only check from %s:%s (connected and closed without TLS)",
                      remote[0], remote[1])  # fmt: skip
            return
        reason = _HINTS[kind].format(timeout=timeout, detail=detail)
        what = "rejected TLS peer" if kind in (CERTIFICATE, HANDSHAKE) else "refused TCP client"
        self._log.warning(kind, "%s %s:%s: %s", what, remote[0], remote[1], reason)
