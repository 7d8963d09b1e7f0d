"""The agent's UDP echo responder: what the ``udp`` probe's ``echo`` mode talks to.

A request is ``MAGIC + b"Q" + token(8) + seq(4) + padding``; the responder answers the same
bytes with ``b"R"``, both directions through a :class:`~meshmon.probes.base.UdpCodec` (in an
agent: the mesh's sealing, :func:`meshmon.probes.echo_guard.mesh_codec`). Every agent runs one,
with or without checks, so it lives apart from the probe (:mod:`meshmon.probes.udp`) and its
result model.
"""

from __future__ import annotations

import logging
import socket

import trio

from meshmon.logs import RateLimitedLog
from meshmon.probes.base import PLAIN, ProbeError, UdpCodec
from meshmon.probes.echo_guard import EchoLimiter, EchoLimits

log = logging.getLogger(__name__)

MAGIC = b"MMU1"
DEFAULT_ECHO_PORT = 7947
"""The responder's default port (the gossip port is separate; this one carries no state)."""


class UdpEchoResponder:
    """Answers ``echo`` requests; runs in every agent (``await nursery.start(r.run)``).

    Not a reflector (see :mod:`meshmon.probes.echo_guard`): it answers only requests that open
    under the codec (in an agent: sealed by a mesh member), never with more bytes than the
    request, and within per-source and total rate limits (authentic requests only consume
    them, so a flood of garbage cannot starve members). It keeps no other state per peer.
    """

    def __init__(self, address: str = "0.0.0.0", port: int = DEFAULT_ECHO_PORT,
                 codec: UdpCodec = PLAIN, limits: EchoLimits | None = None) -> None:  # fmt: skip
        self.address = address
        self.port = port
        self.codec = codec
        self.limiter = EchoLimiter(limits)
        self.answered = 0
        self.dropped = 0
        """Requests not answered: not authentic, rate limited, or the reply would be larger."""
        self._bad = RateLimitedLog(log)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind and serve until cancelled; ``task_status.started`` gets the bound port."""
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        with sock:
            await sock.bind((self.address, self.port))
            self.port = sock.getsockname()[1]
            task_status.started(self.port)
            while True:
                try:
                    data, peer = await sock.recvfrom(2048)
                except OSError:  # ICMP errors from earlier replies; keep serving
                    continue
                reply = self.answer(data, peer[:2], trio.current_time())
                if reply is None:
                    continue
                try:
                    await sock.sendto(reply, peer)
                    self.answered += 1
                except OSError as exc:
                    log.debug("UDP echo: cannot answer %s: %s", peer, exc)

    def answer(self, data: bytes, peer: tuple[str, int], now: float) -> bytes | None:
        """The reply to datagram ``data`` from ``peer`` at monotonic ``now``, or ``None``."""
        plain = self.codec.open(data, peer)
        if plain is None or not plain.startswith(MAGIC + b"Q"):
            self.dropped += 1
            self._bad.warning("udp-echo", "UDP echo: dropped a %d-byte datagram from %s that "
                              "is not an authentic echo request", len(data), peer[0])
            return None
        if not self.limiter.allow(peer[0], now):
            self.dropped += 1
            self._bad.warning("udp-echo-rate", "UDP echo: rate limit reached (%s); not "
                              "answering", peer[0])  # fmt: skip
            return None
        try:
            reply = self.codec.seal(MAGIC + b"R" + plain[len(MAGIC) + 1 :], peer)
        except ProbeError as exc:
            self.dropped += 1
            self._bad.warning("udp-echo-seal", "UDP echo: cannot answer %s: %s", peer[0], exc)
            return None
        if len(reply) > len(data):  # never amplify
            self.dropped += 1
            return None
        return reply
