"""``udp``: request/reply over UDP → :class:`UdpConnectResult` (the responder that answers the
``echo`` mode lives in :mod:`meshmon.probes.echo_responder`, so an agent loads it alone).

Two modes (param ``mode``):

* ``echo`` — agent to agent. Every agent runs :class:`UdpEchoResponder`. A request is
  ``MAGIC + b"Q" + token(8) + seq(4) + padding``; the responder answers the same bytes with
  ``b"R"``. Both directions pass through a :class:`~meshmon.probes.base.UdpCodec`, which is where
  the mesh's datagram sealing plugs in (plain by default), so agents can measure UDP RTT, loss
  and jitter between each other without ICMP privileges.
* ``payload`` (default) — any UDP service: send the configured ``payload`` (text) or
  ``payload_hex``, and count any datagram coming back (optionally matching the ``expect``
  regex, applied to the reply decoded as Latin-1). A closed port shows up as "port unreachable"
  because the socket is connected and the kernel reports the ICMP error.

Other params: ``port``, ``count`` (default 1 for payload, 5 for echo), ``interval`` (0.2 s),
``family``.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from meshmon.probes.base import PLAIN, ParamError, ProbeError, UdpCodec, param
from meshmon.probes.echo_responder import DEFAULT_ECHO_PORT, MAGIC, UdpEchoResponder
from meshmon.probes.params import (
    FAMILY,
    PORT,
    Issue,
    Param,
    ParamSchema,
    host_port_target,
    regex_rule,
)
from meshmon.results import UdpConnectResult
from meshmon.results.stats import jitter_ms

__all__ = ["DEFAULT_ECHO_PORT", "MAGIC", "PARAMS", "UdpEchoResponder", "UdpParams", "udp_probe"]


@dataclass(frozen=True)
class UdpParams:
    """Parameters of a ``udp`` check."""

    mode: str = "payload"
    """``payload`` for any UDP service, ``echo`` for another agent's responder."""
    count: int = 1
    """Datagrams per run (``echo`` defaults to 5 for loss and jitter)."""
    interval: float = 0.2
    """Seconds between datagrams."""
    payload: bytes = b"meshmon\n"
    """What ``payload`` mode sends."""
    expect: str | None = None
    """Regex a reply must match (``payload`` mode); ``None`` accepts any reply."""
    size: int = 64
    """Echo request size in bytes (``echo`` mode)."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> UdpParams:
        """Validated parameters."""
        mode = param(params, "mode", str, "payload")
        if mode not in ("payload", "echo"):
            raise ParamError(f"params.mode must be payload or echo, not {mode!r}")
        count = param(params, "count", int, 5 if mode == "echo" else 1)
        interval = param(params, "interval", float, cls.interval)
        payload = cls.payload
        if "payload_hex" in params:
            try:
                payload = bytes.fromhex(param(params, "payload_hex", str, ""))
            except ValueError as exc:
                raise ParamError(f"params.payload_hex is not hex: {exc}") from None
        elif "payload" in params:
            payload = param(params, "payload", str, "").encode()
        expect = param(params, "expect", str, None)
        if expect is not None:
            try:
                re.compile(expect)
            except re.error as exc:
                raise ParamError(f"params.expect is not a valid regex: {exc}") from None
        size = param(params, "size", int, cls.size)
        if not 1 <= count <= 1000 or interval < 0 or not 21 <= size <= 1400:
            raise ParamError("params: count 1-1000, interval >= 0, size 21-1400 bytes")
        return cls(mode, count, interval, payload, expect, size)


def _hex_rule(value: str) -> str | None:
    try:
        bytes.fromhex(value)
    except ValueError as exc:
        return f"{value!r} is not hex ({exc})"
    return None


def _udp_rules(params: Mapping[str, Any], timeout: float) -> Iterable[Issue]:
    if "payload" in params and "payload_hex" in params:
        yield ("params.payload_hex", "give payload or payload_hex, not both")
    count = params.get("count", 5 if params.get("mode") == "echo" else 1)
    interval = params.get("interval", UdpParams.interval)
    if (count - 1) * interval >= timeout:
        yield ("params.count", f"count={count} × interval={interval}s does not fit the check's "
               f"timeout of {timeout:g}s; lower count or interval, or raise timeout")


PARAMS = ParamSchema(
    params={
        "port": PORT,
        "family": FAMILY,
        "mode": Param((str,), "payload (any UDP service) or echo (another agent)",
                      choices=("payload", "echo")),
        "count": Param((int,), "datagrams per run (1; echo: 5)", low=1, high=1000),
        "interval": Param((float,), "seconds between datagrams (0.2)", low=0),
        "payload": Param((str,), "text to send (payload mode)"),
        "payload_hex": Param((str,), "bytes to send, as hex (payload mode)", rule=_hex_rule),
        "expect": Param((str,), "regex a reply must match", rule=regex_rule),
        "size": Param((int,), "echo request size in bytes (64)", low=21, high=1400),
    },
    target=host_port_target(lambda p: DEFAULT_ECHO_PORT if p.get("mode") == "echo" else None),
    rules=(_udp_rules,),
    parse=lambda params, timeout: UdpParams.from_params(params),
)
"""What a ``udp`` check accepts: ``host:port`` (or ``params.port``; echo mode defaults to 7947)."""


async def udp_probe(address: str, family: int, port: int, p: UdpParams, wait: float,
                    codec: UdpCodec = PLAIN) -> UdpConnectResult:  # fmt: skip
    """Send ``p.count`` datagrams and collect replies until ``wait`` after the last one."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    sock = trio.socket.socket(af, socket.SOCK_DGRAM)
    peer = (address, port)
    token = os.urandom(8)
    sent_at: dict[int, float] = {}
    rtts: dict[int, float] = {}
    errors: list[str] = []
    expect = re.compile(p.expect.encode("latin-1")) if p.expect else None
    all_back = trio.Event()
    try:
        await sock.connect(peer)

        async def receive() -> None:
            while True:
                try:
                    data = await sock.recv(65535)
                except OSError as exc:
                    text = f"receive failed: {exc}"
                    if exc.errno == errno.ECONNREFUSED:
                        text = "port unreachable (nothing listens on that port)"
                        all_back.set()  # the target said no: no point waiting for replies
                    if text not in errors:
                        errors.append(text)
                    continue
                now = time.monotonic()
                if p.mode == "echo":
                    plain = codec.open(data, peer)
                    if plain is None or not plain.startswith(MAGIC + b"R" + token):
                        continue
                    seq = struct.unpack_from("!I", plain, len(MAGIC) + 9)[0]
                else:
                    if expect is not None and not expect.search(data):
                        errors.append(f"reply did not match {p.expect!r}: {data[:60]!r}")
                        continue
                    seq = len(rtts)
                if seq in sent_at and seq not in rtts:
                    rtts[seq] = (now - sent_at[seq]) * 1000
                if len(rtts) == p.count:
                    all_back.set()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            start = trio.current_time()
            for seq in range(p.count):
                if seq:
                    await trio.sleep_until(start + seq * p.interval)
                if p.mode == "echo":
                    body = MAGIC + b"Q" + token + struct.pack("!I", seq)
                    try:
                        datagram = codec.seal(body.ljust(p.size, b"\0"), peer)
                    except ProbeError as exc:  # no key for that peer: nothing will answer
                        errors.append(str(exc))
                        all_back.set()
                        break
                else:
                    datagram = p.payload
                sent_at[seq] = time.monotonic()
                try:
                    await sock.send(datagram)
                except OSError as exc:
                    errors.append(f"send failed: {exc.strerror or exc}")
            with trio.move_on_after(wait):
                await all_back.wait()
            nursery.cancel_scope.cancel()
    except OSError as exc:
        errors.append(f"cannot send to {address}:{port}: {exc.strerror or exc}")
    finally:
        sock.close()
    latencies = [rtts[s] for s in sorted(rtts)]
    ok = bool(latencies)
    if not ok and not errors:
        errors.append(f"no reply within {wait:g}s to {len(sent_at)} datagram(s)")
    avg = sum(latencies) / len(latencies) if latencies else None
    return UdpConnectResult(ok, avg, "; ".join(errors) or None, address, port, len(sent_at),
                            len(latencies), tuple(latencies), jitter_ms(latencies))  # fmt: skip
