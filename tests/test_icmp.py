"""The ICMP engine on real sockets: raw (root), datagram (unprivileged, in a netns), errors."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from functools import partial

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from meshmon.probes import icmp_packet as pk
from meshmon.probes.icmp import IcmpConfig, IcmpEngine, _Batch, _Pending

PY = sys.executable
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


# -- sans-IO packet code ---------------------------------------------------------------------


def test_engine_checksums_match_the_reference_for_odd_and_even_payloads() -> None:
    for size in (56, 7, 0):
        engine = IcmpEngine(IcmpConfig(families=(4,), payload_size=size))
        engine.open()
        try:
            fs = engine._socks[4]
            for seq in (0, 1, 0xFFFF):
                packet = engine._packet(fs, seq)
                assert packet == pk.build_echo(4, fs.ident, seq, engine._payload)
                assert pk.checksum(packet) == 0
        finally:
            engine.close()


def test_echo_packet_checksum_and_parse_reply() -> None:
    packet = pk.build_echo(4, 0x1234, 7, b"abc")
    assert pk.checksum(packet) == 0  # a correct checksum sums to zero
    reply = bytes([0]) + packet[1:]
    msg = pk.parse(4, reply, has_ip_header=False)
    assert msg is not None and (msg.kind, msg.ident, msg.seq) == ("reply", 0x1234, 7)
    assert pk.parse(4, packet, has_ip_header=False) is None  # our own request: ignored
    assert pk.parse(6, pk.build_echo(6, 1, 2, b""), has_ip_header=False) is None


def test_parse_quoted_time_exceeded_v4_with_ip_header() -> None:
    inner_ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 84, 0, 0, 1, 1, 0,
                           socket.inet_aton("10.0.0.2"), socket.inet_aton("10.9.9.9"))
    quoted = inner_ip + pk.build_echo(4, 77, 300, b"")[:8]
    icmp = struct.pack("!BBHI", 11, 0, 0, 0) + quoted
    outer_ip = bytes([0x45]) + bytes(19)
    msg = pk.parse(4, outer_ip + icmp, has_ip_header=True)
    assert msg is not None
    assert (msg.kind, msg.ident, msg.seq, msg.original_dst) == ("time_exceeded", 77, 300,
                                                               "10.9.9.9")
    assert pk.describe_error(4, 3, 1) == "host unreachable"
    assert pk.describe_error(6, 1, 4) == "port unreachable"


def test_parse_rejects_garbage() -> None:
    for data in (b"", b"\x00" * 5, b"\x0b\x00" + b"\x00" * 10, b"\x03\x01" + bytes(40)):
        assert pk.parse(4, data, has_ip_header=False) is None
    assert pk.parse(4, b"\x45" + bytes(10), has_ip_header=True) is None


# -- the engine, as root (raw sockets) -------------------------------------------------------


async def test_raw_engine_pings_v4_and_v6_loopback() -> None:
    async with trio.open_nursery() as nursery:
        engine = await nursery.start(IcmpEngine(IcmpConfig(mode="raw")).run)
        assert engine.modes == {4: "raw", 6: "raw"}
        with trio.fail_after(5):
            v4 = await engine.ping("127.0.0.1", 4, count=3, interval=0.01, reply_timeout=1)
            v6 = await engine.ping("::1", 6, count=3, interval=0.01, reply_timeout=1)
        for echoes, addr in ((v4, "127.0.0.1"), (v6, "::1")):
            assert [e.kind for e in echoes] == ["reply"] * 3
            assert all(e.responder == addr and e.rtt_ms is not None and 0 < e.rtt_ms < 100
                       for e in echoes)
        nursery.cancel_scope.cancel()


async def test_many_targets_share_one_socket_and_replies_reach_their_probe() -> None:
    targets = [f"127.1.{i // 200}.{i % 200 + 1}" for i in range(600)]
    got: dict[str, list[str | None]] = {}
    async with trio.open_nursery() as nursery:
        engine = await nursery.start(IcmpEngine(IcmpConfig(families=(4,))).run)

        async def one(t: str) -> None:
            got[t] = [e.responder for e in await engine.ping(t, 4, count=2, interval=0.001,
                                                              reply_timeout=2)]

        with trio.fail_after(10):
            async with trio.open_nursery() as probes:
                for t in targets:
                    probes.start_soon(one, t)
        assert engine.stats["sent"] == 1200 and engine.stats["received"] == 1200
        assert engine._pending == {}  # nothing left behind
        nursery.cancel_scope.cancel()
    assert all(got[t] == [t, t] for t in targets)


async def test_two_engines_do_not_steal_each_others_replies() -> None:
    async with trio.open_nursery() as nursery:
        a = await nursery.start(IcmpEngine(IcmpConfig(families=(4,), mode="raw")).run)
        b = await nursery.start(IcmpEngine(IcmpConfig(families=(4,), mode="raw")).run)
        assert a._socks[4].ident != b._socks[4].ident
        with trio.fail_after(5):
            async with trio.open_nursery() as inner:
                for engine in (a, b):
                    inner.start_soon(partial(engine.ping, "127.0.0.1", 4, count=20,
                                             interval=0.0, reply_timeout=1.0))
        assert a.stats["received"] == 20 and b.stats["received"] == 20
        # without the kernel filter each raw socket would also read the other's 20 replies
        # (and count them as ignored); the socket filter keeps them out of Python altogether
        assert a.stats["ignored"] == 0 and b.stats["ignored"] == 0
        nursery.cancel_scope.cancel()


async def test_kernel_timestamps_measure_no_more_than_the_monotonic_clock() -> None:
    async with trio.open_nursery() as nursery:
        engine = await nursery.start(IcmpEngine(IcmpConfig(families=(4,))).run)
        t0 = trio.current_time()
        echoes = await engine.ping("127.0.0.1", 4, count=5, interval=0.0, reply_timeout=1)
        elapsed_ms = (trio.current_time() - t0) * 1000
        assert all(e.rtt_ms is not None and 0 <= e.rtt_ms <= elapsed_ms for e in echoes)
        nursery.cancel_scope.cancel()


async def test_family_without_socket_is_reported_not_swapped() -> None:
    async with trio.open_nursery() as nursery:
        engine = await nursery.start(IcmpEngine(IcmpConfig(families=(4,))).run)
        echoes = await engine.ping("::1", 6, count=1, reply_timeout=0.5)
        assert echoes[0].kind == "send_error" and "IPv6" in (echoes[0].error or "")
        nursery.cancel_scope.cancel()


async def test_reply_from_another_address_is_ignored_and_the_probe_forgotten() -> None:
    # (Targets that never answer are tested in a namespace: test_probe_netns.py.)
    async with trio.open_nursery() as nursery:
        engine = await nursery.start(IcmpEngine(IcmpConfig(families=(4,))).run)
        batch = _Batch()
        pending = _Pending("127.0.0.2", 4, None, batch)
        await engine._send(pending)
        pending.dest = "127.0.0.3"  # the reply from .2 no longer matches: must be ignored
        with trio.move_on_after(0.3):
            await batch.event.wait()
        assert pending.answer is None and engine.stats["ignored"] == 1
        engine._forget([pending])
        assert engine._pending == {}
        nursery.cancel_scope.cancel()


# -- privileges ------------------------------------------------------------------------------

SCRIPT = """
import json, trio
from meshmon.probes.icmp import IcmpEngine, IcmpConfig, IcmpPermissionError
from meshmon.probes.traceroute import trace, TraceParams
async def main():
    try:
        e = IcmpEngine(IcmpConfig(mode=MODE))
        e.open()
        async with trio.open_nursery() as n:
            await n.start(e.run)
            out = {"modes": e.modes}
            for fam, addr in ((4, "127.0.0.1"), (6, "::1")):
                echoes = await e.ping(addr, fam, count=2, interval=0, reply_timeout=1)
                out[f"v{fam}"] = [x.kind for x in echoes]
            t = await trace(e, "127.0.0.1", 4, TraceParams(rounds=1, max_hops=3, interval=0.1))
            out["trace"] = [t.target_reached, len(t.hops)]
            n.cancel_scope.cancel()
    except IcmpPermissionError as exc:
        out = {"error": str(exc)}
    print(json.dumps(out))
trio.run(main)
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"mmicmp{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _run_as_nobody(prefix: list[str], mode: str = '"auto"') -> dict[str, object]:
    proc = subprocess.run([*prefix, *NOBODY, PY, "-c", SCRIPT.replace("MODE", mode)],
                          capture_output=True, text=True, timeout=30,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_unprivileged_datagram_socket_when_ping_group_range_allows(netns: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                    "net.ipv4.ping_group_range=0 2147483647"], check=True)
    out = _run_as_nobody(["ip", "netns", "exec", netns])
    assert out == {"modes": {"4": "dgram", "6": "dgram"}, "v4": ["reply", "reply"],
                   "v6": ["reply", "reply"], "trace": [True, 1]}


def test_no_privilege_at_all_fails_at_start_naming_sysctl_and_capability(netns: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                    "net.ipv4.ping_group_range=1 0"], check=True)
    out = _run_as_nobody(["ip", "netns", "exec", netns])
    assert "net.ipv4.ping_group_range" in str(out["error"])
    assert "CAP_NET_RAW" in str(out["error"])


async def test_run_probe_batch_pings_many_targets_in_one_call() -> None:
    from meshmon.probes import ProbeContext, run_probe_batch
    from meshmon.results import Ping

    async with trio.open_nursery() as nursery:
        engine = await nursery.start(IcmpEngine().run)
        ctx = ProbeContext(agent="n", check="c", icmp=engine)
        targets = ["127.1.0.1", "127.1.0.2", "not a host", "::1"]  # fails locally, no DNS
        with trio.fail_after(5):
            rows = await run_probe_batch("ping", targets, {"count": 2, "interval": 0.01}, 2.0,
                                         ctx)
        nursery.cancel_scope.cancel()
    assert [len(row) for row in rows] == [1, 1, 1, 1]
    results = [row[0] for row in rows]
    assert all(isinstance(x, Ping) for x in results)
    assert [x.target for x in results] == targets
    assert [x.family for x in results] == [4, 4, None, 6]
    assert [x.is_successful() for x in results] == [True, True, False, True]
    assert "cannot resolve" in (results[2].error_message() or "")
    assert engine.stats["sent"] == 6


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([4, 6]), st.booleans())
def test_parsers_never_raise_on_arbitrary_bytes(data: bytes, family: int, ip: bool) -> None:
    msg = pk.parse(family, data, has_ip_header=ip)
    assert msg is None or msg.kind in ("reply", "time_exceeded", "unreachable", "too_big")
    err = pk.parse_extended_err(family, data)
    assert err is None or isinstance(err.icmp_type, int)


async def test_the_agent_path_stores_what_the_objects_say() -> None:
    from meshmon.probes import ProbeContext, run_probe_batch_encoded
    from meshmon.results import Ping

    async with trio.open_nursery() as nursery:
        engine = await nursery.start(IcmpEngine().run)
        ctx = ProbeContext(agent="n", check="c", icmp=engine)
        targets = ["127.1.0.1", "127.1.0.2:7", "::1", "127.1.0.3:x"]
        params = {"count": 2, "interval": 0.01}
        with trio.fail_after(10):
            rows = await run_probe_batch_encoded("ping", targets, params, 2.0, ctx,
                                                 record_as=["a", "b", "c", "d"])  # fmt: skip
            bad = await run_probe_batch_encoded("ping", targets[:1], {"count": True}, 2.0, ctx)
            good = await run_probe_batch_encoded("ping", targets[:1], {"count": 1}, 2.0, ctx)
            bad_again = await run_probe_batch_encoded("ping", targets[:1], {"count": True}, 2.0,
                                                      ctx)  # fmt: skip
        nursery.cancel_scope.cancel()
    assert [len(row) for row in rows] == [1, 1, 1, 1]
    decoded = [row[0].decode() for row in rows]
    assert all(isinstance(x, Ping) for x in decoded)
    assert [x.target for x in decoded] == ["a", "b", "c", "d"]  # recorded as asked
    assert [x.family for x in decoded] == [4, 4, 6, None]
    assert [x.is_successful() for x in decoded] == [True, True, True, False]
    assert "port must be a number" in (decoded[3].error_message() or "")
    for one, x in zip((row[0] for row in rows), decoded, strict=True):
        assert isinstance(x, Ping) and (one.check, one.kind) == ("c", "ping")
        assert (one.success, one.response_time_ms) == (x.is_successful(), x.response_time_ms())
        assert one.loss_pct == x.result.loss_pct and one.started_at == x.started_at
    first = decoded[0]
    assert isinstance(first, Ping) and first.result.sent == 2 and first.result.loss_pct == 0.0
    assert first.result.resolved_ip == "127.1.0.1" and first.agent == "n"
    # params are validated once per distinct set, and 1 is not True to the cache
    assert not bad[0][0].success and "count" in (bad[0][0].decode().error_message() or "")
    assert good[0][0].success and not bad_again[0][0].success
