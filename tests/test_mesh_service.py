"""The membership driver over real transports (sealed UDP and mTLS on 127.0.0.x), in one process:
members met through gossip and push-pull are sealed for without a key exchange per pair."""

from __future__ import annotations

from collections import Counter
from contextlib import AsyncExitStack

import trio

from meshmon.membership import NodeMeta, State, local
from meshmon.mesh import MeshService
from meshmon.net import MeshTransport, TransportConfig, open_transport
from tests.conftest import Mesh

N = 6


def _meta(transport: MeshTransport) -> NodeMeta:
    peer = transport.identity.peer
    host, udp = transport.udp_address
    return NodeMeta(peer.name, host, udp, transport.tcp_address[1], peer.tags, "test",
                    bytes.fromhex(peer.fingerprint))  # fmt: skip


async def test_a_mesh_started_at_once_converges_without_a_hello_per_pair(mesh: Mesh) -> None:
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            transports = []
            for i in range(N):
                host = f"127.0.0.{70 + i}"
                identity, trust = mesh.identity(mesh.node(f"m{i}", ips=(host,)))
                transports.append(await stack.enter_async_context(
                    open_transport(identity, trust, TransportConfig(host=host, udp_port=0))))
            seed = transports[0].tcp_address
            done = trio.Event()

            def changed() -> None:
                if all(sum(m.state is State.ALIVE for m in s.core.members()) == N
                       for s in services):  # fmt: skip
                    done.set()

            services = [MeshService(local(), _meta(t), t, t.trust, [] if i == 0 else [seed],
                                    on_change=changed)
                        for i, t in enumerate(transports)]  # fmt: skip
            async with trio.open_nursery() as nursery:
                for service in services:
                    await nursery.start(service.run)
                await done.wait()
                # every member is sealed for: a datagram to any other member goes out at once
                for t in transports:
                    for other in transports:
                        if other is not t:
                            assert t.name_at(other.udp_address) == other.name
                streams = Counter[str]()
                for t in transports:
                    streams.update(t.streams)
                assert streams["sent:hello"] == 0, streams
                assert streams["sent:mm-push-pull"] >= N - 1  # the joins
                assert not any(k.startswith("failed:") for k in streams), streams
                for t in transports:
                    assert set(t.drops) <= {"unknown_sender"}, t.drops
                nursery.cancel_scope.cancel()
