"""Opening the ICMP engine's sockets: datagram or raw, filters, receive buffer, timestamps.

Theory of operation
-------------------
:mod:`meshmon.probes.icmp` keeps one socket per address family. An unprivileged datagram
("ping") socket is tried first where the mode allows: the kernel then writes its own
identifier (the socket's local "port") into every request and hands the socket only its
replies, and ICMP errors arrive on the error queue (``IP_RECVERR``). A raw socket (root or
``CAP_NET_RAW``) sees every ICMP packet of the host: ``ICMP_FILTER``/``ICMP6_FILTER`` keep the
types a prober cannot use in the kernel, and a classic BPF program (:func:`bpf_program`) drops
other pingers' echo replies before they reach Python. Both get a large receive buffer (a burst
of replies from 1000 targets must never overflow it) and, unless turned off, kernel receive
timestamps (``SO_TIMESTAMPNS``).
"""

from __future__ import annotations

import ctypes
import logging
import random
import socket
import struct
from collections.abc import Sequence

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


def permission_message(family: int, errors: Sequence[str]) -> str:
    """What to set when neither socket of ``family`` opens (``errors``: why each failed)."""
    return (
        f"cannot open an ICMPv{family} socket ({'; '.join(errors)}). Either allow unprivileged "
        f"ping sockets for this process's group, e.g. `sysctl -w net.ipv4.ping_group_range="
        f"\"0 2147483647\"`, or run with CAP_NET_RAW (e.g. `setcap cap_net_raw+p` on the "
        f"interpreter, or AmbientCapabilities=CAP_NET_RAW in the systemd unit) or as root"
    )


class FamilySocket:
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
        """The TTL (hop limit) of the next requests; ``None``: the system default."""
        if ttl != self.ttl:
            self.sock.setsockopt(*self._ttl_opt(), self.default_ttl if ttl is None else ttl)
            self.ttl = ttl


def open_socket(family: int, mode: str, receive_buffer: int,
                kernel_timestamps: bool) -> tuple[socket.socket, str, int]:  # fmt: skip
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
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, receive_buffer)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        if kernel_timestamps:
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
            attach_ident_filter(sock, family, ident)
    except BaseException:
        sock.close()
        raise
    return sock, mode, ident


SO_ATTACH_FILTER = 26


def bpf_program(family: int, ident: int) -> list[tuple[int, int, int, int]]:
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


def attach_ident_filter(sock: socket.socket, family: int, ident: int) -> None:
    """Attach :func:`bpf_program`; harmless to skip where unsupported (Python filters too)."""
    program = bpf_program(family, ident)
    code = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as exc:  # pragma: no cover - only on kernels without socket filters
        log.info("ICMP engine: no kernel filter (%s); filtering in Python", exc)
