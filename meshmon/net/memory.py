"""An in-memory :class:`meshmon.net.transport.Transport` for tests and single-process setups.

Datagrams go straight into the receiver's channel (no sealing: there is no wire to protect) and
requests call the receiver's handler directly. ``MemoryNetwork.blocked`` lets a test cut UDP
or TCP between two addresses; ``sent`` counts datagrams for assertions.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import trio

from meshmon.net.frames import FrameTooLarge
from meshmon.net.transport import (
    PURPOSE_MEMBERSHIP,
    Address,
    Datagram,
    PeerUnreachableError,
    RemoteError,
    RequestHandler,
)
from meshmon.pki import PeerIdentity
from meshmon.wire import MAX_PLAINTEXT, SealError


@dataclass
class MemoryNetwork:
    """The wire between :class:`MemoryTransport` objects."""

    by_udp: dict[Address, MemoryTransport] = field(default_factory=dict)
    by_tcp: dict[Address, MemoryTransport] = field(default_factory=dict)
    blocked: set[tuple[str, Address, Address]] = field(default_factory=set)
    """``("udp" | "tcp", src, dst)`` triples that are cut (src is the sender's address)."""
    sent: int = 0

    def transport(self, name: str, udp: Address, tcp: Address | None = None,
                  queue: int = 1024) -> MemoryTransport:  # fmt: skip
        """Attach a node named ``name`` at ``udp`` (and ``tcp``, default the same address)."""
        node = MemoryTransport(self, name, udp, tcp or udp, queue)
        self.by_udp[udp] = node
        self.by_tcp[node.tcp_address] = node
        return node


class MemoryTransport:
    """One node on a :class:`MemoryNetwork`; same API as :class:`MeshTransport`."""

    def __init__(self, network: MemoryNetwork, name: str, udp: Address, tcp: Address,
                 queue: int) -> None:  # fmt: skip
        self.network = network
        self.name = name
        self.udp_address = udp
        self.tcp_address = tcp
        self.identity = PeerIdentity(name, (), 0, "", dt.datetime.max.replace(tzinfo=dt.UTC))
        self._queue = queue
        self._channels: dict[int, tuple[trio.MemorySendChannel[Datagram],
                                        trio.MemoryReceiveChannel[Datagram]]] = {}  # fmt: skip
        self._handlers: dict[str, RequestHandler] = {"ping": _echo}
        self.datagrams = self.channel(PURPOSE_MEMBERSHIP)
        self.dropped = 0

    def channel(self, purpose: int) -> trio.MemoryReceiveChannel[Datagram]:
        """The receive channel of datagrams with ``purpose``."""
        if purpose not in self._channels:
            self._channels[purpose] = trio.open_memory_channel[Datagram](self._queue)
        return self._channels[purpose][1]

    def on_request(self, kind: str, handler: RequestHandler) -> None:
        """Serve requests of ``kind`` with ``handler``."""
        self._handlers[kind] = handler

    def tcp_address_of(self, udp: Address) -> Address:
        """The TCP address of the node at UDP ``udp``."""
        node = self.network.by_udp.get(udp)
        return udp if node is None else node.tcp_address

    async def send_datagram(self, addr: Address, plaintext: bytes, purpose: int = 0) -> None:
        """Deliver to the node at ``addr`` unless cut, unknown or its queue is full."""
        if len(plaintext) > MAX_PLAINTEXT:
            raise SealError("send", f"plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
        await trio.lowlevel.checkpoint()
        dest = self.network.by_udp.get(addr)
        if dest is None or ("udp", self.udp_address, addr) in self.network.blocked:
            self.dropped += 1
            return
        pair = dest._channels.get(purpose)
        if pair is None:
            dest.dropped += 1
            return
        try:
            pair[0].send_nowait(Datagram(self.name, self.udp_address, purpose, plaintext))
            self.network.sent += 1
        except trio.WouldBlock:
            dest.dropped += 1

    async def request(self, addr: Address, kind: str, payload: bytes,
                      timeout: float | None = None,  # noqa: ASYNC109
                      max_answer: int | None = None) -> bytes:  # fmt: skip
        """Call the handler of the node at TCP ``addr``.

        Raises:
            PeerUnreachableError: no node there, the link is cut, ``timeout`` passed, or the
                answer is larger than ``max_answer`` bytes.
            RemoteError: no handler for ``kind`` or the handler raised.
        """
        dest = self.network.by_tcp.get(addr)
        if dest is None or ("tcp", self.tcp_address, addr) in self.network.blocked:
            await trio.lowlevel.checkpoint()
            raise PeerUnreachableError(f"{addr[0]}:{addr[1]}: cannot connect (in-memory)")
        handler = dest._handlers.get(kind)
        if handler is None:
            await trio.lowlevel.checkpoint()
            raise RemoteError(f"{addr[0]}:{addr[1]}: unknown request kind {kind!r}")
        try:
            with trio.fail_after(10.0 if timeout is None else timeout):
                answer = await handler(self.identity, payload)
        except trio.TooSlowError:
            raise PeerUnreachableError(f"{addr[0]}:{addr[1]}: no answer to {kind!r}") from None
        except Exception as exc:  # the real transport turns handler errors into RemoteError too
            raise RemoteError(f"{addr[0]}:{addr[1]}: {type(exc).__name__}: {exc}") from exc
        if max_answer is not None and len(answer) > max_answer:
            too_large = FrameTooLarge(f"frame of {len(answer)} bytes exceeds the "
                                      f"{max_answer}-byte limit")
            raise PeerUnreachableError(f"{addr[0]}:{addr[1]}: {kind!r} failed: {too_large}"
                                       ) from too_large
        return answer


async def _echo(peer: PeerIdentity, body: bytes) -> bytes:
    await trio.lowlevel.checkpoint()
    return body
