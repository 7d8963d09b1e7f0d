"""The UDP echo responder is no reflector: sealed with the mesh keys between real transports,
never larger than the request, rate limited per source and in total."""

from __future__ import annotations

import socket
import time
from contextlib import AsyncExitStack

import pytest
import trio

from meshmon import results as r
from meshmon.net import PURPOSE_ECHO, PURPOSE_MEMBERSHIP, TransportConfig, open_transport
from meshmon.probes import ProbeContext, UdpEchoResponder, run_probe
from meshmon.probes.echo_guard import EchoLimiter, EchoLimits, mesh_codec
from meshmon.probes.udp import MAGIC
from tests.conftest import Mesh

REQUEST = (MAGIC + b"Q" + bytes(12)).ljust(64, b"\0")


@pytest.mark.parametrize(("steps", "expect"), [
    # (source, now) per request -> answered?   limits: 2/s per source (burst 3), 4/s total (5)
    ([("a", 0.0)] * 4, [True, True, True, False]),
    ([("a", 0.0)] * 3 + [("a", 0.5)], [True, True, True, True]),  # half a second: one token
    ([("a", 0.0)] * 3 + [("b", 0.0)] * 3, [True] * 5 + [False]),  # the total runs out
    ([("a", 0.0)] * 3 + [("b", 0.0)] * 3 + [("b", 0.25)], [True] * 5 + [False, True]),
])  # fmt: skip
def test_limiter_table(steps: list[tuple[str, float]], expect: list[bool]) -> None:
    limiter = EchoLimiter(EchoLimits(2.0, 3.0, 4.0, 5.0))
    assert [limiter.allow(source, now) for source, now in steps] == expect
    assert limiter.refused == expect.count(False)


def test_limiter_memory_is_bounded_and_forgets_idle_sources_first() -> None:
    limiter = EchoLimiter(EchoLimits(1.0, 2.0, 1e9, 1e9, max_sources=100))
    limiter.allow("busy", 0.0)
    limiter.allow("busy", 0.0)
    for i in range(1000):
        limiter.allow(f"10.0.{i // 250}.{i % 250}", 0.0)
    assert limiter.tracked <= 100
    assert not limiter.allow("busy", 0.0)  # the exhausted source was not forgotten


def test_replies_are_never_larger_and_the_limit_caps_one_source() -> None:
    responder = UdpEchoResponder("127.0.0.1", 0, limits=EchoLimits(10.0, 20.0, 1000.0, 1000.0))
    replies = [responder.answer(REQUEST, ("192.0.2.1", 9), 0.0) for _ in range(50)]
    sent = [x for x in replies if x is not None]
    assert len(sent) == 20 and all(len(x) <= len(REQUEST) for x in sent)
    assert responder.answer(REQUEST, ("192.0.2.2", 9), 0.0) is not None  # others still served
    assert responder.answer(REQUEST, ("192.0.2.1", 9), 1.0) is not None  # refilled
    assert responder.answer(b"garbage", ("192.0.2.3", 9), 1.0) is None


async def test_sealed_echo_answers_members_only(mesh: Mesh) -> None:
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            ts = []
            for i, name in enumerate(("a", "b")):
                identity, trust = mesh.identity(mesh.node(name))
                config = TransportConfig(host=f"127.0.0.{60 + i}", udp_port=0)
                ts.append(await stack.enter_async_context(open_transport(identity, trust, config)))
            a, b = ts
            nursery = await stack.enter_async_context(trio.open_nursery())
            responder = UdpEchoResponder("127.0.0.61", 0, mesh_codec(
                b.keyring, b.name_at, PURPOSE_ECHO, 1))  # fmt: skip
            echo_port = await nursery.start(responder.run)
            offset = echo_port - b.udp_address[1]
            ctx = ProbeContext(agent="a", check="echo",
                               udp_codec=mesh_codec(a.keyring, a.name_at, PURPOSE_ECHO, offset))
            target = f"127.0.0.61:{echo_port}"
            params = {"mode": "echo", "count": 3, "interval": 0.0}

            # a has not exchanged keys with b yet: it says so rather than timing out
            (unknown,) = await run_probe("udp", target, params, 1.0, ctx)
            assert "not the echo port of a mesh member" in (unknown.error_message() or "")
            assert await a.exchange_keys(b.udp_address) == "b"
            (ok,) = await run_probe("udp", target, params, 2.0, ctx)
            assert ok.is_successful(), ok.error_message()
            assert isinstance(ok.result, r.UdpConnectResult) and ok.result.received == 3
            assert responder.answered == 3 and responder.dropped == 0

            # a stranger (plain request) and a member's gossip aimed at the echo port: silence
            (stranger,) = await run_probe("udp", target, params, 0.3, ProbeContext())
            assert not stranger.is_successful() and responder.dropped == 3
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                gossip = a.keyring.seal("b", REQUEST, time.time(), PURPOSE_MEMBERSHIP)
                await sock.sendto(gossip, ("127.0.0.61", echo_port))
                sealed_ok = a.keyring.seal("b", REQUEST, time.time(), PURPOSE_ECHO)
                await sock.sendto(sealed_ok, ("127.0.0.61", echo_port))
                reply = await sock.recv(2048)  # only the second is answered...
                assert len(reply) == len(sealed_ok)  # ...with exactly as many bytes
                await sock.sendto(sealed_ok, ("127.0.0.61", echo_port))  # a replay: dropped
                with trio.move_on_after(0.3):
                    await sock.recv(2048)
                    pytest.fail("a replayed request was answered")
            assert responder.dropped == 5 and responder.answered == 4
            nursery.cancel_scope.cancel()
