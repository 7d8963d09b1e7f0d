"""The ICMP engine: one socket per address family, one receiver task, many probes.

Theory of operation
-------------------
icmplib opens sockets per host and its async API is asyncio-only; at 1000 hosts it lost most
replies. This engine keeps the socket side in our hands instead:

* One socket per address family, shared by every probe in the agent. We prefer an unprivileged
  datagram ICMP socket (Linux "ping socket", allowed when the process's group is inside
  ``net.ipv4.ping_group_range``; the sysctl governs IPv6 too) and fall back to a raw socket
  (root or ``CAP_NET_RAW``), opened by :mod:`meshmon.probes.icmp_socket`. When neither opens,
  :class:`IcmpPermissionError` says what to set. The mode in use is :attr:`IcmpEngine.modes`;
  ``IcmpConfig.mode`` can force one.
* Every echo request is keyed by ``(identifier, sequence)``. On a raw socket the identifier is
  ours (random per engine, so two engines or another ping on the host never collide); on a
  datagram socket the kernel overwrites it with the socket's local "port", which we read back
  with ``getsockname()`` after binding. Sequence numbers are allocated per socket, skipping keys
  still in flight.
* One receiver task per socket drains everything readable (``recvmsg`` in a loop until it would
  block), parses it (:mod:`meshmon.probes.icmp_packet`), and hands the answer to the waiting
  probe by key. Echo requests (our own, seen on loopback by raw sockets) and other hosts'
  traffic are dropped; on raw sockets the kernel's ``ICMP_FILTER``/``ICMP6_FILTER`` drops most of
  it before it reaches Python. A reply whose source is not the probed address is ignored.
  An echo reply to one of our requests, by far the most common packet, is matched by key
  without being parsed into a message.
* :meth:`IcmpEngine.ping_many` sends a round's requests back to back without yielding, then
  drains the sockets itself before it waits: on a LAN most replies are in by then (all of
  them on loopback), and are read without waking the receiver task. Each wake-up of a task
  costs far more CPU than reading a packet, since caches go cold while the process sleeps.
* RTTs use the kernel's receive timestamp (``SO_TIMESTAMPNS``, wall clock in ns) against the
  wall time read just before ``sendto``, so Python's scheduling delay is not measured. Because a
  wall-clock step could corrupt that difference, it is cross-checked against the monotonic
  clock (which bounds it from above); when it is negative or larger, the monotonic RTT is used.
* TTL-limited requests (traceroute) set ``IP_TTL``/``IPV6_UNICAST_HOPS`` on the shared socket
  right before ``sendto``; there is no ``await`` between the two, so no other task interleaves.
  ICMP errors reach a raw socket as messages quoting our request; on a datagram socket they
  arrive on the error queue (``IP_RECVERR``) with the offender in ancillary data.

The engine is a trio service: ``engine = await nursery.start(IcmpEngine(config).run)``.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import trio

from meshmon.probes import icmp_packet as pk
from meshmon.probes.icmp_socket import (
    IP_RECVERR,
    IPV6_RECVERR,
    MSG_ERRQUEUE,
    SO_TIMESTAMPNS,
    FamilySocket,
    open_socket,
    permission_message,
)

log = logging.getLogger(__name__)

_ANC_BUF = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(16 + 28) + 64
_MAX_PACKET = 2048
_ID_SEQ = struct.Struct("!HH")
_FAIR_BATCH = 256
"""Sends (and 4× as many receives) between checkpoints: long enough that a batch costs one
wake-up, short enough that other tasks wait at most a few milliseconds."""


class IcmpError(Exception):
    """Base of the ICMP engine's errors."""


class IcmpPermissionError(IcmpError):
    """Neither a datagram nor a raw ICMP socket could be opened."""


class IcmpEngineError(IcmpError):
    """The engine is not running, or the family has no socket."""


@dataclass(frozen=True)
class IcmpConfig:
    """How the ICMP engine opens its sockets."""

    mode: Literal["auto", "dgram", "raw"] = "auto"
    """``auto`` tries the unprivileged datagram socket first, then raw (least privilege)."""
    families: tuple[int, ...] = (4, 6)
    """Families to open; a family whose socket cannot open is reported per probe, not fatal,
    unless no family opens at all."""
    receive_buffer: int = 4 * 1024 * 1024
    """SO_RCVBUF: a burst of replies from 1000 targets (≈ 100 kB) must never overflow it."""
    payload_size: int = 56
    """Echo payload bytes, as ping's default (64-byte ICMP message)."""
    kernel_timestamps: bool = True
    """Use SO_TIMESTAMPNS receive timestamps (turn off only to compare)."""
    receive_coalesce: float = 0.005
    """Seconds the receiver lets replies gather before reading them. RTTs come from kernel
    timestamps, so this costs no accuracy, and it bounds the receiver to 200 wake-ups/s however
    the replies of a batch spread out (each wake-up costs ~0.25 ms CPU on small VMs). Turned
    off automatically if a reply ever arrives without a kernel timestamp."""


@dataclass(frozen=True, slots=True)
class Echo:
    """The outcome of one echo request.

    ``kind`` is ``reply`` (the target answered), ``time_exceeded`` / ``unreachable`` /
    ``too_big`` (a router or the target sent an ICMP error; ``responder`` is who), ``timeout``,
    or ``send_error`` (the kernel refused to send; ``error`` says why).
    """

    kind: str
    rtt_ms: float | None
    responder: str | None
    error: str | None
    ttl: int | None = None


class _Batch:
    """Probes awaited together: one event, set when the last of them is answered."""

    __slots__ = ("event", "remaining")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.remaining = 0

    def done_one(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.event.set()


class _Pending:
    """One echo request in flight."""

    __slots__ = ("answer", "batch", "dest", "family", "key", "sent_mono", "sent_wall", "ttl")

    def __init__(self, dest: str, family: int, ttl: int | None, batch: _Batch) -> None:
        self.dest = dest
        self.family = family
        self.ttl = ttl
        self.batch = batch
        batch.remaining += 1
        self.sent_wall = 0
        self.sent_mono = 0
        self.answer: Echo | None = None
        self.key: int | None = None

    def finish(self, answer: Echo) -> None:
        self.answer = answer
        self.batch.done_one()


class IcmpEngine:
    """Shared ICMP sockets and the receiver tasks that route answers to waiting probes."""

    def __init__(self, config: IcmpConfig | None = None) -> None:
        self.config = config or IcmpConfig()
        self._socks: dict[int, FamilySocket] = {}
        self._open_errors: dict[int, str] = {}
        self._pending: dict[int, _Pending] = {}
        """Requests in flight by :func:`_key` (an int: cheaper to hash than a tuple)."""
        self._payload = bytes(range(256))[: self.config.payload_size].ljust(
            self.config.payload_size, b"\0"
        )
        even = self._payload + b"\0" * (len(self._payload) % 2)
        self._payload_sum = sum(struct.unpack(f"!{len(even) // 2}H", even))
        self._coalesce = self.config.receive_coalesce if self.config.kernel_timestamps else 0.0
        self.stats = {"sent": 0, "received": 0, "ignored": 0, "late": 0}
        """Counters: packets sent, answers routed, packets not ours, answers after timeout."""

    @property
    def modes(self) -> dict[int, str]:
        """Family → ``dgram`` or ``raw`` for the families that opened."""
        return {f: s.mode for f, s in self._socks.items()}

    def family_error(self, family: int) -> str | None:
        """Why a family has no socket (``None`` when it has one)."""
        if family in self._socks:
            return None
        return self._open_errors.get(family, f"the ICMP engine has no IPv{family} socket")

    def open(self) -> None:
        """Open the sockets now; :meth:`run` does it when not done yet.

        Calling it before starting :meth:`run` in a nursery lets a caller handle
        :class:`IcmpPermissionError` plainly instead of inside an exception group.
        """
        for family in self.config.families:
            modes = ["dgram", "raw"] if self.config.mode == "auto" else [self.config.mode]
            errors: list[str] = []
            for mode in modes:
                try:
                    sock, used, ident = open_socket(family, mode, self.config.receive_buffer,
                                                   self.config.kernel_timestamps)
                except PermissionError as exc:
                    errors.append(f"{mode}: {exc.strerror}")
                    continue
                except OSError as exc:
                    errors.append(f"{mode}: {exc.strerror or exc}")
                    continue
                self._socks[family] = FamilySocket(family, sock, used, ident)
                break
            else:
                self._open_errors[family] = permission_message(family, errors)
        if not self._socks:
            msgs = "; ".join(self._open_errors.values())
            raise IcmpPermissionError(msgs)

    def close(self) -> None:
        """Close the sockets; waiting probes see a timeout."""
        for fs in self._socks.values():
            fs.sock.close()
        self._socks.clear()

    async def run(self, *, task_status: trio.TaskStatus[IcmpEngine] = trio.TASK_STATUS_IGNORED
                  ) -> None:  # fmt: skip
        """Open the sockets, run one receiver per socket, and serve until cancelled.

        Raises:
            IcmpPermissionError: no ICMP socket could be opened (message says what to set).
        """
        if not self._socks:
            self.open()
        for family, fs in self._socks.items():
            log.info("ICMP engine: IPv%d %s socket, identifier %d", family, fs.mode, fs.ident)
        try:
            async with trio.open_nursery() as nursery:
                for fs in self._socks.values():
                    nursery.start_soon(self._receiver, fs)
                task_status.started(self)
        finally:
            self.close()

    # -- sending ------------------------------------------------------------------------------

    def _allocate(self, fs: FamilySocket) -> int:
        for _ in range(0x10000):
            seq = fs.next_seq
            fs.next_seq = (seq + 1) & 0xFFFF
            if _key(fs.family, fs.ident, seq) not in self._pending:
                return seq
        raise IcmpEngineError("65536 echo requests in flight on one socket; lower concurrency")

    def _packet(self, fs: FamilySocket, seq: int) -> bytes:
        # The checksum of a fixed payload plus (type, id, seq) is a few additions; the kernel
        # fills it for ICMPv6 and datagram sockets anyway.
        if fs.family == 6:
            return struct.pack("!BBHHH", 128, 0, 0, fs.ident, seq) + self._payload
        total = self._payload_sum + (8 << 8) + fs.ident + seq
        total = (total >> 16) + (total & 0xFFFF)
        total += total >> 16
        return struct.pack("!BBHHH", 8, 0, ~total & 0xFFFF, fs.ident, seq) + self._payload

    def _try_send(self, pending: _Pending) -> bool:
        """Send one request, or settle it with its send error; False when the socket buffer is
        full (nothing sent: :meth:`_send` waits and tries again)."""
        family = pending.family
        fs = self._socks.get(family)
        if fs is None:
            pending.finish(Echo("send_error", None, None, self.family_error(family), pending.ttl))
            return True
        seq = self._allocate(fs)
        packet = self._packet(fs, seq)
        address = pending.dest
        dest = (address, 0) if family == 4 else (address, 0, 0, 0)
        retried = False
        while True:
            if pending.ttl != fs.ttl:
                fs.set_ttl(pending.ttl)
            pending.sent_wall = time.time_ns()
            pending.sent_mono = time.monotonic_ns()
            try:
                fs.sock.sendto(packet, dest)
            except BlockingIOError:
                return False
            except OSError as exc:
                # A datagram socket reports an earlier ICMP error of *another* probe once
                # (sk_err) on the next call; retry once before blaming this request.
                if fs.mode == "dgram" and not retried and exc.errno != errno.EINVAL:
                    retried = True
                    continue
                pending.finish(Echo("send_error", None, None, _send_error_text(exc), pending.ttl))
                return True
            break
        self.stats["sent"] += 1
        key = pending.key = _key(family, fs.ident, seq)
        self._pending[key] = pending
        return True

    async def _send(self, pending: _Pending) -> None:
        """Send one request (waiting only if the socket buffer is full); settle send errors."""
        while not self._try_send(pending):
            await trio.lowlevel.wait_writable(self._socks[pending.family].sock)

    async def ping_many(self, targets: Sequence[tuple[str, int]], *, count: int = 1,
                        interval: float = 1.0, reply_timeout: float = 1.0,
                        ttl: int | None = None) -> list[list[Echo]]:  # fmt: skip
        """Ping many ``(address, family)`` targets at once, fping-style.

        Round *i* sends one request to every target back to back, rounds start ``interval``
        apart, and each request may take ``reply_timeout``. One task and one wake-up serve the
        whole batch, which is what keeps the engine cheap at thousands of probes per second.

        Returns:
            Per target, one :class:`Echo` per request in send order.
        """
        if not self._socks:
            raise IcmpEngineError("the ICMP engine is not running; start IcmpEngine.run first")
        batch = _Batch()
        rows: list[list[_Pending]] = [[] for _ in targets]
        start = trio.current_time()
        last_deadline = start
        try:
            for i in range(count):
                if i:
                    await trio.sleep_until(start + i * interval)
                for n, (row, (address, family)) in enumerate(zip(rows, targets, strict=True)):
                    pending = _Pending(address, family, ttl, batch)
                    row.append(pending)
                    if not self._try_send(pending):
                        await self._send(pending)
                    if n % _FAIR_BATCH == _FAIR_BATCH - 1:
                        await trio.lowlevel.checkpoint()  # let other tasks (and replies) in
                last_deadline = trio.current_time() + reply_timeout
                if batch.remaining:  # the replies already in (all of them, on a LAN) are read
                    for fs in self._socks.values():  # now: no wake-up of the receiver for them
                        self._drain(fs)
            if batch.remaining:
                batch.event = trio.Event()  # an earlier round may have completed (and set) it
                with trio.move_on_at(last_deadline + self._coalesce):
                    await batch.event.wait()
        finally:
            self._forget([p for row in rows for p in row])
        limit_ms = reply_timeout * 1000
        return [[_settled(p, limit_ms) for p in row] for row in rows]

    async def ping(self, address: str, family: int, *, count: int = 1, interval: float = 1.0,
                   reply_timeout: float = 1.0, ttl: int | None = None) -> list[Echo]:  # fmt: skip
        """Send ``count`` echo requests ``interval`` seconds apart; wait ``reply_timeout`` each.

        Returns one :class:`Echo` per request, in send order.
        """
        rows = await self.ping_many([(address, family)], count=count, interval=interval,
                                    reply_timeout=reply_timeout, ttl=ttl)  # fmt: skip
        return rows[0]

    async def probe_ttls(self, address: str, family: int, ttls: Sequence[int], *,
                         reply_timeout: float,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                         ) -> list[Echo]:  # fmt: skip
        """One echo request per TTL in ``ttls``, sent back to back in that order, all awaited
        together. Under ``nursery.start`` it reports started once every request is sent, so a
        caller can order and pace sends across calls."""
        if not self._socks:
            raise IcmpEngineError("the ICMP engine is not running; start IcmpEngine.run first")
        batch = _Batch()
        pendings = [_Pending(address, family, ttl, batch) for ttl in ttls]
        try:
            for pending in pendings:
                await self._send(pending)
            task_status.started()
            if batch.remaining:
                with trio.move_on_after(reply_timeout + self._coalesce):
                    await batch.event.wait()
        finally:
            self._forget(pendings)
        return [_settled(p, reply_timeout * 1000) for p in pendings]

    def _forget(self, pendings: Sequence[_Pending]) -> None:
        for p in pendings:
            if p.key is not None and self._pending.get(p.key) is p:
                del self._pending[p.key]

    # -- receiving ----------------------------------------------------------------------------

    async def _receiver(self, fs: FamilySocket) -> None:
        while True:
            await trio.lowlevel.wait_readable(fs.sock)
            if self._coalesce:
                await trio.sleep(self._coalesce)
            self._drain(fs)

    def _drain(self, fs: FamilySocket) -> None:
        """Read and route what is readable now, up to a bound (then the caller yields, so a
        flood cannot starve the agent)."""
        if fs.mode == "dgram":
            self._drain_errqueue(fs)
        sock = fs.sock
        has_ip = fs.family == 4 and fs.mode == "raw"
        reply_type = pk.ECHO_REPLY[fs.family]
        ours = _key(fs.family, fs.ident, 0)  # | seq: the key of one of our requests
        pending_get = self._pending.get
        at = 20 if has_ip else 0
        for _ in range(_FAIR_BATCH * 4):
            try:
                data, anc, _flags, addr = sock.recvmsg(_MAX_PACKET, _ANC_BUF)
            except BlockingIOError:
                return
            except OSError as exc:  # a queued error (datagram socket); keep serving
                log.debug("ICMP receive error ignored: %s", exc)
                continue
            now_mono = time.monotonic_ns()
            # The usual packet, a reply to one of our requests from its target, is matched
            # without parsing it into a message; anything else takes the general path.
            if len(data) >= at + 8 and data[at] == reply_type and (
                not has_ip or data[0] == 0x45  # IPv4 without options
            ):
                ident, seq = _ID_SEQ.unpack_from(data, at + 4)
                pending = pending_get(ours | seq) if ident == fs.ident else None
                if pending is not None and addr[0] == pending.dest:
                    self._answer(ours | seq, pending, "reply", None, addr[0], anc, now_mono)
                    continue
            msg = pk.parse(fs.family, data, has_ip_header=has_ip)
            if msg is None or msg.kind == "other" or msg.proto not in (1, 58):
                self.stats["ignored"] += 1
                continue
            self._deliver(fs, msg.ident, msg.seq, msg, addr[0], anc, now_mono)

    def _drain_errqueue(self, fs: FamilySocket) -> None:
        while True:
            try:
                data, anc, _flags, _addr = fs.sock.recvmsg(_MAX_PACKET, _ANC_BUF, MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            now_mono = time.monotonic_ns()
            err = None
            for level, ctype, payload in anc:
                if (level, ctype) in ((socket.IPPROTO_IP, IP_RECVERR),
                                      (socket.IPPROTO_IPV6, IPV6_RECVERR)):  # fmt: skip
                    err = pk.parse_extended_err(fs.family, payload)
            if err is None or len(data) < 8 or err.origin not in (
                pk.SO_EE_ORIGIN_ICMP, pk.SO_EE_ORIGIN_ICMP6
            ):
                self.stats["ignored"] += 1
                continue
            _t, _c, _s, ident, seq = struct.unpack_from("!BBHHH", data)
            kind = pk.kind_of(fs.family, err.icmp_type)
            msg = pk.IcmpMessage(kind, err.icmp_type, err.code, ident, seq, 1, None)
            self._deliver(fs, ident, seq, msg, err.offender or "", anc, now_mono)

    def _deliver(self, fs: FamilySocket, ident: int, seq: int, msg: pk.IcmpMessage,
                 source: str, anc: list[tuple[int, int, bytes]], now_mono: int,
                 ) -> None:  # fmt: skip
        key = _key(fs.family, ident, seq)
        pending = self._pending.get(key)
        if pending is None:
            self.stats["ignored" if ident != fs.ident else "late"] += 1
            return
        if msg.kind == "reply":
            if not pk.same_address(source, pending.dest):
                self.stats["ignored"] += 1
                return
        elif msg.original_dst is not None and not pk.same_address(msg.original_dst, pending.dest):
            self.stats["ignored"] += 1
            return
        error = None if msg.kind == "reply" else pk.describe_error(fs.family, msg.icmp_type,
                                                                     msg.code)  # fmt: skip
        self._answer(key, pending, msg.kind, error, source, anc, now_mono)

    def _answer(self, key: int, pending: _Pending, kind: str, error: str | None, source: str,
                anc: list[tuple[int, int, bytes]], now_mono: int) -> None:  # fmt: skip
        """Settle ``pending`` (in flight under ``key``) with what came back."""
        del self._pending[key]
        rtt = _rtt_ms(pending, anc, now_mono)
        if self._coalesce and not anc:
            log.warning("ICMP engine: no kernel receive timestamps; reading replies at once")
            self._coalesce = 0.0
        pending.finish(Echo(kind, rtt, source, error, pending.ttl))
        self.stats["received"] += 1


def _key(family: int, ident: int, seq: int) -> int:
    """The key of a request in flight: family, identifier and sequence in one int."""
    return family << 32 | ident << 16 | seq


def _rtt_ms(pending: _Pending, anc: list[tuple[int, int, bytes]], now_mono: int) -> float:
    mono_ns = now_mono - pending.sent_mono
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
            sec, nsec = struct.unpack_from("=qq", payload)
            kernel_ns = sec * 1_000_000_000 + nsec - pending.sent_wall
            # The monotonic span bounds the true RTT from above (we read it after the kernel
            # stamped the packet); a wall-clock step shows up as a value outside [0, mono].
            if 0 <= kernel_ns <= mono_ns:
                return float(kernel_ns / 1e6)
    return float(mono_ns / 1e6)


def _settled(pending: _Pending, limit_ms: float) -> Echo:
    """The answer, or a timeout when none came or it came later than allowed."""
    answer = pending.answer
    if answer is None or (answer.rtt_ms is not None and answer.rtt_ms > limit_ms):
        return Echo("timeout", None, None, None, pending.ttl)
    return answer


def _send_error_text(exc: OSError) -> str:
    names = {
        errno.ENETUNREACH: "network unreachable (no route)",
        errno.EHOSTUNREACH: "host unreachable",
        errno.EACCES: "sending not permitted (firewall or broadcast address)",
        errno.EPERM: "sending not permitted (firewall)",
        errno.EMSGSIZE: "message too long for the path MTU",
    }
    return names.get(exc.errno or 0, f"send failed: {exc.strerror or exc}")
