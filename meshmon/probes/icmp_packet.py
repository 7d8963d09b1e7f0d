"""ICMP and ICMPv6 packets: building echo requests and parsing what comes back. Pure functions.

Theory of operation
-------------------
The engine (:mod:`meshmon.probes.icmp`) sends echo requests and receives three kinds of answers:

* an echo reply, carrying our identifier and sequence number;
* an ICMP error (time exceeded, destination unreachable, packet too big) quoting the start of the
  packet that caused it: the original IP header and at least 8 bytes after it, which for our
  echo request are the ICMP header with identifier and sequence (for UDP and TCP probes, the
  ports);
* on a Linux datagram ("ping") socket with ``IP_RECVERR``, errors arrive on the error queue
  instead: the quoted packet is our own ICMP header, and the offender is in ancillary data
  (:func:`parse_extended_err`).

Raw IPv4 sockets deliver the IP header in front of the ICMP message; raw IPv6 and both datagram
sockets do not. The kernel fills the checksum for ICMPv6 and for datagram sockets; we fill it for
raw IPv4 (it is harmless elsewhere).

icmplib builds and parses packets inside its socket classes, so it cannot be called without its
sockets; these few lines are ours.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Literal

ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
TIME_EXCEEDED = {4: 11, 6: 3}
UNREACHABLE = {4: 3, 6: 1}
PACKET_TOO_BIG_V6 = 2

_UNREACH_V4 = {
    0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
    3: "port unreachable", 4: "fragmentation needed", 5: "source route failed",
    6: "destination network unknown", 7: "destination host unknown",
    9: "network administratively prohibited", 10: "host administratively prohibited",
    13: "communication administratively prohibited",
}  # fmt: skip
_UNREACH_V6 = {
    0: "no route to destination", 1: "communication administratively prohibited",
    2: "beyond scope of source address", 3: "address unreachable", 4: "port unreachable",
    5: "source address failed policy", 6: "reject route to destination",
}  # fmt: skip

Kind = Literal["reply", "time_exceeded", "unreachable", "too_big", "other"]


@dataclass(frozen=True, slots=True)
class IcmpMessage:
    """What an incoming ICMP message means for our probes.

    For a reply, ``ident``/``seq`` are the reply's; for an error, they are those of the quoted
    echo request (``proto`` 1 or 58), or the quoted UDP/TCP ports (``proto`` 17 or 6, then
    ``ident`` is the source port and ``seq`` the destination port). ``original_dst`` is the
    destination of the quoted packet (for a reply: ``None``).
    """

    kind: Kind
    icmp_type: int
    code: int
    ident: int
    seq: int
    proto: int
    original_dst: str | None


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def build_echo(family: int, ident: int, seq: int, payload: bytes) -> bytes:
    """An echo request (type 8 or 128) with ``ident``, ``seq`` and ``payload``."""
    header = struct.pack("!BBHHH", ECHO_REQUEST[family], 0, 0, ident, seq)
    csum = checksum(header + payload) if family == 4 else 0
    return struct.pack("!BBHHH", ECHO_REQUEST[family], 0, csum, ident, seq) + payload


def describe_error(family: int, icmp_type: int, code: int) -> str:
    """Human text for an ICMP error type/code."""
    if icmp_type == TIME_EXCEEDED[family]:
        return "time exceeded (TTL expired in transit)"
    if icmp_type == UNREACHABLE[family]:
        table = _UNREACH_V4 if family == 4 else _UNREACH_V6
        return table.get(code, f"destination unreachable (code {code})")
    if family == 6 and icmp_type == PACKET_TOO_BIG_V6:
        return "packet too big"
    return f"ICMP type {icmp_type} code {code}"


def kind_of(family: int, icmp_type: int) -> Kind:
    if icmp_type == ECHO_REPLY[family]:
        return "reply"
    if icmp_type == TIME_EXCEEDED[family]:
        return "time_exceeded"
    if icmp_type == UNREACHABLE[family]:
        return "unreachable"
    if family == 6 and icmp_type == PACKET_TOO_BIG_V6:
        return "too_big"
    return "other"


def parse(family: int, data: bytes, *, has_ip_header: bool) -> IcmpMessage | None:
    """Parse a received ICMP(v6) message; ``None`` for anything that is not for a prober.

    Echo requests (our own, seen on loopback by a raw socket) are ``None``.
    """
    if has_ip_header:
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        data = data[(data[0] & 0x0F) * 4 :]
    if len(data) < 8:
        return None
    icmp_type, code, _, ident, seq = struct.unpack_from("!BBHHH", data)
    kind = kind_of(family, icmp_type)
    if kind == "reply":
        return IcmpMessage(kind, icmp_type, code, ident, seq, 1 if family == 4 else 58, None)
    if kind == "other":
        return None
    quoted = _parse_quoted(family, data[8:])
    if quoted is None:
        return None
    proto, dst, q_ident, q_seq = quoted
    return IcmpMessage(kind, icmp_type, code, q_ident, q_seq, proto, dst)


def _parse_quoted(family: int, inner: bytes) -> tuple[int, str, int, int] | None:
    """Protocol, destination and (id, seq) or (sport, dport) of a quoted packet."""
    if family == 4:
        if len(inner) < 28 or inner[0] >> 4 != 4:
            return None
        ihl = (inner[0] & 0x0F) * 4
        proto = inner[9]
        dst = socket.inet_ntop(socket.AF_INET, inner[16:20])
        body = inner[ihl : ihl + 8]
    else:
        if len(inner) < 48 or inner[0] >> 4 != 6:
            return None
        proto = inner[6]  # extension headers are not followed: our probes send none
        dst = socket.inet_ntop(socket.AF_INET6, inner[24:40])
        body = inner[40:48]
    if len(body) < 8:
        return None
    if proto in (1, 58):
        echo_type, _, _, ident, seq = struct.unpack_from("!BBHHH", body)
        if echo_type != ECHO_REQUEST[family]:
            return None
        return proto, dst, ident, seq
    if proto in (6, 17):
        sport, dport = struct.unpack_from("!HH", body)
        return proto, dst, sport, dport
    return None


@dataclass(frozen=True, slots=True)
class ExtendedErr:
    """A ``struct sock_extended_err`` from the error queue (``IP_RECVERR``)."""

    errno: int
    origin: int
    icmp_type: int
    code: int
    offender: str | None


SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3


def parse_extended_err(family: int, data: bytes) -> ExtendedErr | None:
    """Decode ``IP_RECVERR``/``IPV6_RECVERR`` ancillary data (Linux)."""
    if len(data) < 16:
        return None
    errno_, origin, icmp_type, code, _pad, _info, _data = struct.unpack_from("=IBBBBII", data)
    offender = None
    rest = data[16:]
    if len(rest) >= 8:
        sa_family = struct.unpack_from("=H", rest)[0]
        if sa_family == socket.AF_INET:
            offender = socket.inet_ntop(socket.AF_INET, rest[4:8])
        elif sa_family == socket.AF_INET6 and len(rest) >= 24:
            offender = socket.inet_ntop(socket.AF_INET6, rest[8:24])
    return ExtendedErr(errno_, origin, icmp_type, code, offender)


def same_address(a: str, b: str) -> bool:
    """Whether two textual IP addresses are the same (scope ids and spelling ignored)."""
    if a == b:
        return True
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]) == ipaddress.ip_address(b.split("%", 1)[0])
    except ValueError:
        return False
