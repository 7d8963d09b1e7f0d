"""mtr-style traceroute: rounds of TTL-limited probes, per-hop addresses, loss and latency.

Theory of operation
-------------------
Routers and hosts rate-limit the ICMP errors a trace depends on: Linux answers each destination
with a burst of about 6 "time exceeded" / "port unreachable" messages, then 1 per second
(``net.ipv4.icmp_ratelimit``, and ``net.ipv6.icmp.ratelimit``); many routers do the same. A trace
that fires every TTL at once, or probes each hop more often than once a second, measures those
limits, not the path: the target (which answers every probe whose TTL reaches it) runs out of
tokens and stays silent to the lowest TTLs, so the trace finds it too far away, and healthy
routers show loss. So probes are paced the way mtr paces them:

* Probes go out **one at a time, in ascending TTL order**; each waits ``reply_timeout`` for its
  answer while the next ones go out (a send completes before the next is scheduled, so the order
  on the wire is the TTL order).
* A **round** probes TTL 1 up to the target once. Rounds start ``interval`` seconds apart
  (default 1 s, as mtr's ``-i``), and within a round probes are spaced ``probe_spacing`` seconds
  apart (default ``interval / TTLs in the round``, spreading the round over the interval as mtr
  does). Every hop therefore sees one probe per ``interval``, within the 1/s refill of the
  usual limits.
* The first round does not know where the target is: it climbs from TTL 1 and **stops climbing
  at the first TTL the target answers**; later rounds probe only up to the lowest TTL at which
  the target answered so far, and answers from higher TTLs are discarded (:func:`fold_rounds`).
* A probe is sent only if its full ``reply_timeout`` fits before the trace's deadline (the
  check's timeout); TTLs cut off that way are not counted as sent, so they never show as loss.
* A trace takes at least ``rounds x interval`` (like ``mtr -c rounds``), even when every
  answer is in earlier: traces run back to back then still ask each hop (and the target) once
  per interval on average. Returning early let back-to-back traces drain the target's budget
  until, climbing, it answered only a TTL far beyond its own.

Answers are folded into per-hop statistics (:func:`fold_rounds`, pure): the addresses seen at
each TTL, probes sent and answered, the RTTs. The target is reached at the lowest TTL whose
answer comes from the target itself (an echo reply, or for UDP a "port unreachable", for TCP a
SYN-ACK or RST). When nothing answers at all, the result says so explicitly.

ICMP probes run on the shared :class:`~meshmon.probes.icmp.IcmpEngine`. UDP and TCP probes use
one ordinary kernel socket per probe with ``IP_RECVERR``: the kernel puts the router's ICMP error
on the socket's error queue with the offender's address, which needs no privileges at all.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from meshmon.probes import icmp_packet as pk
from meshmon.probes.base import ParamError, param
from meshmon.probes.icmp import _ANC_BUF, Echo, IcmpEngine
from meshmon.probes.icmp_socket import IP_RECVERR, IPV6_RECVERR, MSG_ERRQUEUE, SO_TIMESTAMPNS
from meshmon.probes.params import FAMILY, PORT, Param, ParamSchema, host_target
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
    interval: float = 1.0
    """Seconds between the starts of rounds: mtr's default, and the refill period of the usual
    ICMP rate limits, so no hop is asked more often than it answers. When not set and the
    check's timeout is shorter than ``(rounds + 1) x 1 s``, it defaults to
    ``0.95 x timeout / (rounds + 1)`` instead (raise the timeout to keep 1 s)."""
    probe_spacing: float | None = None
    """Seconds between consecutive probes of a round; ``None``: ``interval`` divided by the
    number of TTLs in the round (the round spreads over the interval, as in mtr)."""
    port: int = 33434
    """UDP: base destination port (+TTL-1 per probe, as traceroute). TCP: destination port."""
    reply_timeout: float = 1.0
    """Seconds each probe waits for its answer (shortened so the trace fits the timeout)."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any], timeout: float) -> TraceParams:
        """Validated parameters; ``reply_timeout`` is cut so the last round ends within
        ``timeout``.

        Raises:
            ParamError: naming the key and what is allowed.
        """
        protocol = param(params, "protocol", str, cls.protocol)
        rounds = param(params, "rounds", int, cls.rounds)
        # The default interval shrinks when the timeout cannot hold rounds x 1 s plus a reply
        # wait (it then leaves one interval for the last replies); an explicit one never does.
        fitted = min(cls.interval, timeout * 0.95 / (max(rounds, 1) + 1))
        tp = cls(
            protocol=protocol,
            max_hops=param(params, "max_hops", int, cls.max_hops),
            rounds=rounds,
            interval=param(params, "interval", float, fitted),
            probe_spacing=param(params, "probe_spacing", float, None),
            port=param(params, "port", int, 80 if protocol == "tcp" else cls.port),
        )  # fmt: skip
        if tp.protocol not in ("icmp", "udp", "tcp") or not 1 <= tp.max_hops <= 64 or (
            not 1 <= tp.rounds <= 100
        ):
            raise ParamError("trace params: protocol icmp|udp|tcp, max_hops 1-64, rounds 1-100")
        if tp.interval < 0 or (tp.probe_spacing is not None and tp.probe_spacing < 0):
            raise ParamError("params.interval and params.probe_spacing must be >= 0")
        reply = param(params, "reply_timeout", float, cls.reply_timeout)
        if reply <= 0:
            raise ParamError("params.reply_timeout must be > 0")
        # The last round starts at (rounds-1) * interval; its sends span at most one round.
        sending = (tp.rounds - 1) * tp.interval + tp.spacing(tp.max_hops) * (tp.max_hops - 1)
        budget = timeout * 0.95 - sending
        if budget <= 0:
            raise ParamError(f"rounds={tp.rounds} x interval={tp.interval}s (probes spaced "
                             f"{tp.spacing(tp.max_hops):.3g}s) do not fit the timeout of "
                             f"{timeout:g}s; lower rounds or interval, or raise the timeout")
        return dataclasses.replace(tp, reply_timeout=min(reply, budget))

    def spacing(self, ttls: int) -> float:
        """Seconds between consecutive probes of a round of ``ttls`` probes."""
        if self.probe_spacing is not None:
            return self.probe_spacing
        return self.interval / max(ttls, 1)


PARAMS = ParamSchema(
    params={
        "protocol": Param((str,), "icmp (needs ICMP), udp or tcp", choices=("icmp", "udp", "tcp")),
        "max_hops": Param((int,), "highest TTL tried (30)", low=1, high=64),
        "rounds": Param((int,), "probes per hop (3)", low=1, high=100),
        "interval": Param((float,), "seconds between rounds (1.0, mtr's pacing)", low=0),
        "probe_spacing": Param((float,), "seconds between a round's probes (interval / TTLs)",
                               low=0),
        "port": PORT,
        "reply_timeout": Param((float,), "seconds to wait for a round's answers (1.0)",
                               low=0.001),
        "family": FAMILY,
    },
    target=host_target,
    parse=TraceParams.from_params,  # rounds x interval and the spacing must fit the timeout
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
                timeout: float | None = None) -> TracerouteResult:  # noqa: ASYNC109 - deadline
    """Trace the path to ``address``, paced as the module docstring says.

    ``timeout`` (default: whatever the rounds and ``reply_timeout`` need) is a deadline for the
    whole trace: a probe that could not wait its full ``reply_timeout`` before it is not sent.
    """
    if params.protocol not in ("icmp", "udp", "tcp"):
        raise ValueError(f"trace protocol must be icmp, udp or tcp, not {params.protocol!r}")
    if params.protocol == "icmp" and engine is None:
        raise ValueError("an ICMP trace needs the ICMP engine; or use protocol udp or tcp")
    t0 = time.monotonic()
    start = trio.current_time()
    deadline = start + timeout if timeout is not None else float("inf")
    rounds: list[list[Echo]] = []
    reached: list[int] = []  # TTLs at which the target answered

    async def one(answers: list[Echo], ttl: int, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if params.protocol == "icmp":
            assert engine is not None
            (echo,) = await engine.probe_ttls(address, family, [ttl], task_status=task_status,
                                              reply_timeout=params.reply_timeout)  # fmt: skip
        else:
            port = params.port + ttl - 1 if params.protocol == "udp" else params.port
            echo = await socket_probe(params.protocol, address, family, ttl, port,
                                      params.reply_timeout, task_status=task_status)
        answers[ttl - 1] = echo
        if echo.responder and echo.kind in ("reply", "unreachable") and pk.same_address(
            echo.responder, address
        ):
            reached.append(ttl)

    async with trio.open_nursery() as nursery:
        round_start = start
        for n in range(params.rounds):
            await trio.sleep_until(round_start)
            limit = min(reached, default=params.max_hops)
            spacing = params.spacing(limit)
            answers: list[Echo] = []
            rounds.append(answers)
            for ttl in range(1, limit + 1):
                if reached and ttl > min(reached):
                    break  # the target answered a lower TTL: higher ones measure nothing
                send_at = round_start + (ttl - 1) * spacing
                if send_at + params.reply_timeout > deadline:
                    break  # could not wait for the answer: not sent, not counted as lost
                await trio.sleep_until(send_at)
                answers.append(Echo("timeout", None, None, None, ttl))
                await nursery.start(functools.partial(one, answers, ttl))
            round_start = max(start + (n + 1) * params.interval, trio.current_time())
            if round_start + params.reply_timeout > deadline:
                break
    # A trace lasts rounds x interval, as ``mtr -c rounds`` does: traces run back to back then
    # still ask each hop once per interval on average, never faster than its limit refills.
    await trio.sleep_until(min(start + params.rounds * params.interval, deadline))
    return fold_rounds(address, rounds, params.protocol, (time.monotonic() - t0) * 1000)


async def socket_probe(protocol: str, address: str, family: int, ttl: int, port: int,
                       reply_timeout: float,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                       ) -> Echo:  # fmt: skip
    """One TTL-limited UDP datagram or TCP SYN through an ordinary socket (no privileges).

    Under ``nursery.start`` it reports started once the datagram or SYN is sent (or failed).
    """
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
            task_status.started()
            return Echo("send_error", None, None, f"send failed: {exc.strerror}", ttl)
        task_status.started()
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
