"""The ICMP engine: one socket per address family, one receiver task, many probes.

Theory of operation
-------------------
icmplib opens sockets per host and its async API is asyncio-only; at 1000 hosts it lost most
replies. This engine keeps the socket side in our hands instead:

* One socket per address family, shared by every probe in the agent. We prefer an unprivileged
  datagram ICMP socket (Linux "ping socket", allowed when the process's group is inside
  ``net.ipv4.ping_group_range``; the sysctl governs IPv6 too) and fall back to a raw socket
  (root or ``CAP_NET_RAW``). When neither opens, :class:`IcmpPermissionError` says what to set.
  The mode in use is :attr:`IcmpEngine.modes`; ``IcmpConfig.mode`` can force one.
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

import ctypes
import errno
import logging
import random
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import trio

from meshmon.probes import icmp_packet as pk
from meshmon.probes.capabilities import CAP_NET_RAW, raise_effective

log = logging.getLogger(__name__)

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
SOL_RAW = 255
ICMP_FILTER = 1
ICMP6_FILTER = 1
_ANC_BUF = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(16 + 28) + 64
_MAX_PACKET = 2048
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
        self.key: tuple[int, int, int] | None = None

    def finish(self, answer: Echo) -> None:
        self.answer = answer
        self.batch.done_one()


def _permission_message(family: int, errors: Sequence[str]) -> str:
    return (
        f"cannot open an ICMPv{family} socket ({'; '.join(errors)}). Either allow unprivileged "
        f"ping sockets for this process's group, e.g. `sysctl -w net.ipv4.ping_group_range="
        f"\"0 2147483647\"`, or run with CAP_NET_RAW (e.g. `setcap cap_net_raw+p` on the "
        f"interpreter, or AmbientCapabilities=CAP_NET_RAW in the systemd unit) or as root"
    )


class _FamilySocket:
    """One family's socket and its bookkeeping."""

    def __init__(self, family: int, sock: socket.socket, mode: str, ident: int) -> None:
        self.family = family
        self.sock = sock
        self.mode = mode
        self.ident = ident
        self.next_seq = random.randrange(0x10000)
        self.ttl: int | None = None
        self.default_ttl = sock.getsockopt(*self._ttl_opt())

    def _ttl_opt(self) -> tuple[int, int]:
        if self.family == 4:
            return socket.IPPROTO_IP, socket.IP_TTL
        return socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS

    def set_ttl(self, ttl: int | None) -> None:
        if ttl != self.ttl:
            self.sock.setsockopt(*self._ttl_opt(), self.default_ttl if ttl is None else ttl)
            self.ttl = ttl


def _open_socket(family: int, mode: str, config: IcmpConfig) -> tuple[socket.socket, str, int]:
    """Open one family's socket in ``mode`` (``dgram`` or ``raw``); return it, mode, ident."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    proto = socket.IPPROTO_ICMP if family == 4 else socket.IPPROTO_ICMPV6
    kind = socket.SOCK_DGRAM if mode == "dgram" else socket.SOCK_RAW
    if mode == "raw":  # a file capability (cap_net_raw+p) leaves CAP_NET_RAW to be raised
        raise_effective(CAP_NET_RAW)
    sock = socket.socket(af, kind, proto)
    try:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, config.receive_buffer)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, config.receive_buffer)
        if config.kernel_timestamps:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if mode == "dgram":
            sock.bind(("0.0.0.0", 0) if family == 4 else ("::", 0))
            ident = sock.getsockname()[1]  # the kernel writes this into every request
            if family == 4:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            ident = random.randrange(1, 0x10000)
            if family == 4:  # bitmask of types the kernel should NOT deliver
                allowed = (1 << 0) | (1 << 3) | (1 << 11)
                sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", ~allowed & 0xFFFFFFFF))
            else:
                blocked = [0xFFFFFFFF] * 8
                for t in (1, 2, 3, 129):
                    blocked[t >> 5] &= ~(1 << (t & 31))
                sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *blocked))
            _attach_ident_filter(sock, family, ident)
    except BaseException:
        sock.close()
        raise
    return sock, mode, ident


SO_ATTACH_FILTER = 26


def _bpf_program(family: int, ident: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF: pass echo replies carrying ``ident`` and every error; drop other replies.

    A raw socket receives every ICMP packet for the host, including other pingers' replies;
    this keeps them in the kernel. Errors quote our identifier deeper in the packet, and are
    rare, so they all pass and Python sorts them out.
    """
    ret_all, ret_none = (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)
    if family == 4:  # the packet starts with the IPv4 header
        return [(0xB1, 0, 0, 0),        # ldxb 4*([0]&0xf): X = IP header length
                (0x50, 0, 0, 0),        # ldb [x+0]: ICMP type
                (0x15, 0, 2, 0),        # jeq #0 (echo reply) ? next : accept
                (0x48, 0, 0, 4),        # ldh [x+4]: identifier
                (0x15, 0, 1, ident),    # jeq #ident ? accept : drop
                ret_all, ret_none]  # fmt: skip
    return [(0x30, 0, 0, 0),            # ldb [0]: ICMPv6 type
            (0x15, 0, 2, 129),          # jeq #129 (echo reply) ? next : accept
            (0x28, 0, 0, 4),            # ldh [4]: identifier
            (0x15, 0, 1, ident),        # jeq #ident ? accept : drop
            ret_all, ret_none]  # fmt: skip


def _attach_ident_filter(sock: socket.socket, family: int, ident: int) -> None:
    """Attach :func:`_bpf_program`; harmless to skip where unsupported (Python filters too)."""
    program = _bpf_program(family, ident)
    code = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as exc:  # pragma: no cover - only on kernels without socket filters
        log.info("ICMP engine: no kernel filter (%s); filtering in Python", exc)


class IcmpEngine:
    """Shared ICMP sockets and the receiver tasks that route answers to waiting probes."""

    def __init__(self, config: IcmpConfig | None = None) -> None:
        self.config = config or IcmpConfig()
        self._socks: dict[int, _FamilySocket] = {}
        self._open_errors: dict[int, str] = {}
        self._pending: dict[tuple[int, int, int], _Pending] = {}
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
                    sock, used, ident = _open_socket(family, mode, self.config)
                except PermissionError as exc:
                    errors.append(f"{mode}: {exc.strerror}")
                    continue
                except OSError as exc:
                    errors.append(f"{mode}: {exc.strerror or exc}")
                    continue
                self._socks[family] = _FamilySocket(family, sock, used, ident)
                break
            else:
                self._open_errors[family] = _permission_message(family, errors)
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

    def _allocate(self, fs: _FamilySocket) -> int:
        for _ in range(0x10000):
            seq = fs.next_seq
            fs.next_seq = (seq + 1) & 0xFFFF
            if (fs.family, fs.ident, seq) not in self._pending:
                return seq
        raise IcmpEngineError("65536 echo requests in flight on one socket; lower concurrency")

    def _packet(self, fs: _FamilySocket, seq: int) -> bytes:
        # The checksum of a fixed payload plus (type, id, seq) is a few additions; the kernel
        # fills it for ICMPv6 and datagram sockets anyway.
        if fs.family == 6:
            return struct.pack("!BBHHH", 128, 0, 0, fs.ident, seq) + self._payload
        total = self._payload_sum + (8 << 8) + fs.ident + seq
        total = (total >> 16) + (total & 0xFFFF)
        total += total >> 16
        return struct.pack("!BBHHH", 8, 0, ~total & 0xFFFF, fs.ident, seq) + self._payload

    async def _send(self, pending: _Pending) -> None:
        """Send one request (waiting only if the socket buffer is full); settle send errors."""
        family = pending.family
        fs = self._socks.get(family)
        if fs is None:
            pending.finish(Echo("send_error", None, None, self.family_error(family), pending.ttl))
            return
        seq = self._allocate(fs)
        key = (family, fs.ident, seq)
        packet = self._packet(fs, seq)
        address = pending.dest
        dest = (address, 0) if family == 4 else (address, 0, 0, 0)
        retried = False
        while True:
            fs.set_ttl(pending.ttl)
            pending.sent_wall = time.time_ns()
            pending.sent_mono = time.monotonic_ns()
            try:
                fs.sock.sendto(packet, dest)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fs.sock)
                continue
            except OSError as exc:
                # A datagram socket reports an earlier ICMP error of *another* probe once
                # (sk_err) on the next call; retry once before blaming this request.
                if fs.mode == "dgram" and not retried and exc.errno != errno.EINVAL:
                    retried = True
                    continue
                pending.finish(Echo("send_error", None, None, _send_error_text(exc), pending.ttl))
                return
            break
        self.stats["sent"] += 1
        pending.key = key
        self._pending[key] = pending

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
                    await self._send(pending)
                    if n % _FAIR_BATCH == _FAIR_BATCH - 1:
                        await trio.lowlevel.checkpoint()  # let other tasks (and replies) in
                last_deadline = trio.current_time() + reply_timeout
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

    async def _receiver(self, fs: _FamilySocket) -> None:
        sock = fs.sock
        has_ip = fs.family == 4 and fs.mode == "raw"
        while True:
            await trio.lowlevel.wait_readable(sock)
            if self._coalesce:
                await trio.sleep(self._coalesce)
            if fs.mode == "dgram":
                self._drain_errqueue(fs)
            for _ in range(_FAIR_BATCH * 4):  # then yield, so a flood cannot starve the agent
                try:
                    data, anc, _flags, addr = sock.recvmsg(_MAX_PACKET, _ANC_BUF)
                except BlockingIOError:
                    break
                except OSError as exc:  # a queued error (datagram socket); keep serving
                    log.debug("ICMP receive error ignored: %s", exc)
                    continue
                now_mono = time.monotonic_ns()
                msg = pk.parse(fs.family, data, has_ip_header=has_ip)
                if msg is None or msg.kind == "other":
                    self.stats["ignored"] += 1
                    continue
                if msg.proto not in (1, 58):
                    self.stats["ignored"] += 1
                    continue
                ident = msg.ident
                self._deliver(fs, ident, msg.seq, msg, addr[0], anc, now_mono)

    def _drain_errqueue(self, fs: _FamilySocket) -> None:
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

    def _deliver(self, fs: _FamilySocket, ident: int, seq: int, msg: pk.IcmpMessage,
                 source: str, anc: list[tuple[int, int, bytes]], now_mono: int,
                 ) -> None:  # fmt: skip
        key = (fs.family, ident, seq)
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
        del self._pending[key]
        rtt = _rtt_ms(pending, anc, now_mono)
        if self._coalesce and not anc:
            log.warning("ICMP engine: no kernel receive timestamps; reading replies at once")
            self._coalesce = 0.0
        error = None if msg.kind == "reply" else pk.describe_error(fs.family, msg.icmp_type,
                                                                     msg.code)  # fmt: skip
        pending.finish(Echo(msg.kind, rtt, source, error, pending.ttl))
        self.stats["received"] += 1


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
