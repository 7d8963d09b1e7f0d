"""mtr-style traceroute: rounds of TTL-limited probes, per-hop addresses, loss and latency.

Theory of operation
-------------------
Each round sends one probe per TTL from 1 to ``max_hops`` at once (after the first round only up
to the TTL at which the target answered) and waits up to ``reply_timeout`` for the answers. Answers
are folded into per-hop statistics (:func:`fold_rounds`, pure): the addresses seen at each TTL,
probes sent and answered, the RTTs. The target is reached at the lowest TTL whose answer comes
from the target itself (an echo reply, or for UDP a "port unreachable", for TCP a SYN-ACK or
RST). Hops beyond it are dropped. When nothing answers at all, the result says so explicitly.

ICMP probes run on the shared :class:`~meshmon.probes.icmp.IcmpEngine`. UDP and TCP probes use
one ordinary kernel socket per probe with ``IP_RECVERR``: the kernel puts the router's ICMP error
on the socket's error queue with the offender's address, which needs no privileges at all.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from meshmon.probes import icmp_packet as pk
from meshmon.probes.icmp import (
    _ANC_BUF,
    IP_RECVERR,
    IPV6_RECVERR,
    MSG_ERRQUEUE,
    SO_TIMESTAMPNS,
    Echo,
    IcmpEngine,
)
from meshmon.probes.params import FAMILY, PORT, Issue, Param, ParamSchema, host_target
from meshmon.results import TracerouteHop, TracerouteResult


@dataclass(frozen=True)
class TraceParams:
    """Parameters of a trace (``params`` keys of a ``trace`` check)."""

    protocol: str = "icmp"
    """``icmp`` (needs the ICMP engine), ``udp`` or ``tcp`` (unprivileged)."""
    max_hops: int = 30
    """Highest TTL tried, as traceroute and mtr."""
    rounds: int = 3
    """Probes per hop; loss per hop is measured over these."""
    interval: float = 0.2
    """Seconds between the starts of rounds."""
    port: int = 33434
    """UDP: base destination port (+TTL-1 per probe, as traceroute). TCP: destination port."""


def _rounds_fit(params: Mapping[str, Any], timeout: float) -> Iterable[Issue]:
    rounds = params.get("rounds", TraceParams.rounds)
    interval = params.get("interval", TraceParams.interval)
    if (rounds - 1) * interval >= timeout:
        yield ("params.rounds", f"rounds={rounds} × interval={interval}s does not fit the check's "
               f"timeout of {timeout:g}s; lower rounds or interval, or raise timeout")


PARAMS = ParamSchema(
    params={
        "protocol": Param((str,), "icmp (needs ICMP), udp or tcp", choices=("icmp", "udp", "tcp")),
        "max_hops": Param((int,), "highest TTL tried (30)", low=1, high=64),
        "rounds": Param((int,), "probes per hop (3)", low=1, high=100),
        "interval": Param((float,), "seconds between rounds (0.2)", low=0),
        "port": PORT,
        "reply_timeout": Param((float,), "seconds to wait for a round's answers (1.0)",
                               low=0.001),
        "family": FAMILY,
    },
    target=host_target,
    rules=(_rounds_fit,),
)
"""What a ``trace`` check accepts (checked by ``meshmon config check`` and before each run)."""


def fold_rounds(target: str, rounds: Sequence[Sequence[Echo]], protocol: str,
                elapsed_ms: float) -> TracerouteResult:  # fmt: skip
    """Build the per-hop result from each round's answers (index = TTL-1). Pure."""
    reach_ttl: int | None = None
    errors: list[str] = []
    for answers in rounds:
        for i, echo in enumerate(answers):
            from_target = echo.responder is not None and pk.same_address(echo.responder, target)
            if from_target and echo.kind in ("reply", "unreachable") and (
                reach_ttl is None or i + 1 < reach_ttl
            ):
                reach_ttl = i + 1
            if echo.kind == "send_error" and echo.error and echo.error not in errors:
                errors.append(echo.error)
    width = max((len(a) for a in rounds), default=0)
    if reach_ttl is not None:
        width = reach_ttl
    hops: list[TracerouteHop] = []
    target_rtts: list[float] = []
    for ttl in range(1, width + 1):
        addrs: list[str] = []
        sent = received = 0
        rtts: list[float] = []
        for answers in rounds:
            if ttl > len(answers):
                continue
            echo = answers[ttl - 1]
            sent += 1
            if echo.responder is None or echo.rtt_ms is None:
                continue
            received += 1
            rtts.append(echo.rtt_ms)
            if echo.responder not in addrs:
                addrs.append(echo.responder)
            if ttl == reach_ttl:
                target_rtts.append(echo.rtt_ms)
            elif echo.kind == "unreachable" and echo.error:
                text = f"hop {ttl} ({echo.responder}): {echo.error}"
                if text not in errors:
                    errors.append(text)
        hops.append(TracerouteHop(ttl, tuple(addrs), sent, received, tuple(rtts)))
    if reach_ttl is None:
        last = max((h.ttl for h in hops if h.received), default=0)
        hops = hops[: last + 1] if last else []
        if not last:
            errors.append(f"no hop answered: {target} unreachable within {width} hops")
        else:
            errors.append(f"target not reached; last answer from hop {last}")
    reached = reach_ttl is not None
    total = sum(target_rtts) / len(target_rtts) if target_rtts else elapsed_ms
    return TracerouteResult(tuple(hops), reached, total, tuple(errors), protocol=protocol,
                            resolved_ip=target)  # fmt: skip


async def trace(engine: IcmpEngine | None, address: str, family: int, params: TraceParams,
                reply_timeout: float) -> TracerouteResult:  # fmt: skip
    """Trace the path to ``address``; ``reply_timeout`` bounds each round's wait for answers."""
    if params.protocol not in ("icmp", "udp", "tcp"):
        raise ValueError(f"trace protocol must be icmp, udp or tcp, not {params.protocol!r}")
    if params.protocol == "icmp" and engine is None:
        raise ValueError("an ICMP trace needs the ICMP engine; or use protocol udp or tcp")
    t0 = time.monotonic()
    rounds: list[list[Echo]] = []
    limit = params.max_hops
    start = trio.current_time()
    for n in range(params.rounds):
        if n:
            await trio.sleep_until(start + n * params.interval)
        ttls = list(range(1, limit + 1))
        if params.protocol == "icmp":
            assert engine is not None
            answers = await engine.probe_ttls(address, family, ttls, reply_timeout=reply_timeout)
        else:
            answers = await _socket_round(params, address, family, ttls, reply_timeout)
        rounds.append(answers)
        for i, echo in enumerate(answers):
            if echo.responder and pk.same_address(echo.responder, address):
                limit = min(limit, i + 1)
                break
    return fold_rounds(address, rounds, params.protocol, (time.monotonic() - t0) * 1000)


async def _socket_round(params: TraceParams, address: str, family: int, ttls: Sequence[int],
                        reply_timeout: float) -> list[Echo]:  # fmt: skip
    answers: list[Echo | None] = [None] * len(ttls)

    async def one(i: int, ttl: int) -> None:
        port = params.port + ttl - 1 if params.protocol == "udp" else params.port
        answers[i] = await socket_probe(params.protocol, address, family, ttl, port, reply_timeout)

    async with trio.open_nursery() as nursery:
        for i, ttl in enumerate(ttls):
            nursery.start_soon(one, i, ttl)
    return [a or Echo("timeout", None, None, None, ttls[i]) for i, a in enumerate(answers)]


async def socket_probe(protocol: str, address: str, family: int, ttl: int, port: int,
                       reply_timeout: float) -> Echo:  # fmt: skip
    """One TTL-limited UDP datagram or TCP SYN through an ordinary socket (no privileges)."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    sock = socket.socket(af, kind)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if family == 4:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        dest = (address, port) if family == 4 else (address, port, 0, 0)
        sent_wall = time.time_ns()
        sent_mono = time.monotonic_ns()
        try:
            if protocol == "udp":
                sock.sendto(b"meshmon-trace", dest)
            else:
                sock.connect(dest)
        except BlockingIOError:
            pass
        except OSError as exc:
            return Echo("send_error", None, None, f"send failed: {exc.strerror}", ttl)
        with trio.move_on_after(reply_timeout):
            while True:
                if protocol == "udp":
                    await trio.lowlevel.wait_readable(sock)
                else:
                    await trio.lowlevel.wait_writable(sock)
                echo = _read_socket_answer(sock, protocol, address, family, ttl, sent_wall,
                                           sent_mono)  # fmt: skip
                if echo is not None:
                    return echo
        return Echo("timeout", None, None, None, ttl)
    finally:
        sock.close()


def _read_socket_answer(sock: socket.socket, protocol: str, address: str, family: int,
                        ttl: int, sent_wall: int, sent_mono: int) -> Echo | None:  # fmt: skip
    now_mono = time.monotonic_ns()
    mono_ms = (now_mono - sent_mono) / 1e6
    try:
        _data, anc, _flags, _addr = sock.recvmsg(512, _ANC_BUF, MSG_ERRQUEUE)
    except (BlockingIOError, InterruptedError):
        anc = None
    except OSError:
        anc = None
    if anc is not None:
        rtt = mono_ms
        err = None
        for level, kind, payload in anc:
            if (level, kind) in ((socket.IPPROTO_IP, IP_RECVERR),
                                 (socket.IPPROTO_IPV6, IPV6_RECVERR)):  # fmt: skip
                err = pk.parse_extended_err(family, payload)
            elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                sec, nsec = struct.unpack_from("=qq", payload)
                k = (sec * 1_000_000_000 + nsec - sent_wall) / 1e6
                if 0 <= k <= mono_ms:
                    rtt = k
        if err is not None and err.origin in (pk.SO_EE_ORIGIN_ICMP, pk.SO_EE_ORIGIN_ICMP6):
            kind_ = pk.kind_of(family, err.icmp_type)
            text = pk.describe_error(family, err.icmp_type, err.code)
            return Echo(kind_, rtt, err.offender, text, ttl)
    if protocol == "udp":
        try:
            sock.recv(512)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return None
        return Echo("reply", mono_ms, address, None, ttl)
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code == 0:
        try:
            sock.getpeername()
        except OSError:
            return None
        return Echo("reply", mono_ms, address, None, ttl)
    if code == errno.ECONNREFUSED:
        return Echo("reply", mono_ms, address, None, ttl)  # an RST from the target: reached
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return None  # soft ICMP error already read from the error queue, or coming
    return Echo("send_error", None, None, f"connect failed: {errno.errorcode.get(code, code)}",
                ttl)  # fmt: skip
