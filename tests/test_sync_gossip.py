"""Aggregator URLs learnt through gossip: real agents (in one trio run, on their own loopback
addresses, real UDP gossip and mTLS), one configured with the aggregator, one not, one that
refuses to learn. The one without finds the aggregator in the other's signed metadata."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import trio

from aggregator.summary import summarize
from meshmon.agent import Agent
from meshmon.config import config_from_dict
from meshmon.results import decode_result
from tests.conftest import Mesh, Node
from tests.sync_aggregator import TestAggregator, free_port, server_context


def agent_config(node: Node, mesh: Mesh, data: Path, address: str, port: int,
                 seeds: list[str], sync: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    return {
        "node": {"name": node.name, "data_dir": str(data)},
        "listen": {"address": address, "udp_port": port, "tcp_port": port},
        "mesh": {"seeds": seeds, "profile": "local"},
        "tls": {"ca_cert": str(mesh.ca_cert), "cert": str(node.cert), "key": str(node.key),
                "crl": str(mesh.crl)},
        "sync": sync,
        "checks": [{"name": "svc", "kind": "tcp", "interval": "200ms", "timeout": "100ms",
                    "targets": ["127.0.0.1:1"], "replicas": 0}],
    }  # fmt: skip


async def test_an_agent_without_the_url_learns_it_from_gossip(mesh: Mesh, tmp_path: Path) -> None:
    base = f"127.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
    addresses = {name: f"{base}.{i}" for i, name in enumerate(("ga", "gb", "gc"), start=10)}
    nodes = {name: mesh.node(name, ips=(address,)) for name, address in addresses.items()}
    agg_node = mesh.node("agg1", tags=("aggregator",))
    agg = TestAggregator(server_context(agg_node.cert, agg_node.key, mesh.ca_cert))
    fast = {"max_delay": "200ms", "backoff_min": "20ms", "backoff_max": "100ms"}
    async with trio.open_nursery() as nursery:
        await nursery.start(agg.serve)
        ports = {name: free_port(address) for name, address in addresses.items()}
        seed = [f"{addresses['ga']}:{ports['ga']}"]
        syncs = {"ga": {"url": agg.url, **fast},  # configured; advertises it (the default)
                 "gb": fast,  # nothing configured: learns it
                 "gc": {**fast, "learn": False}}  # nothing configured, will not learn
        agents = {}
        for name in ("ga", "gb", "gc"):
            data = config_from_dict(agent_config(
                nodes[name], mesh, tmp_path / name, addresses[name], ports[name],
                [] if name == "ga" else seed, syncs[name]), tmp_path)  # fmt: skip
            agents[name] = await nursery.start(Agent(data).run)
        with trio.fail_after(60):
            await agg.wait_for(lambda: {a for a, _ in agg.streams} == {"ga", "gb"} and all(
                s.high_water >= 3 for s in agg.streams.values()))
        gb = agents["gb"].api_status()["sync"]
        assert gb["url"] == agg.url and gb["aggregator"] == "agg1"
        assert gb["learnt"] == {agg.url: ["ga"]}
        assert gb["store"] == agents["gb"].store.store_id
        assert agents["ga"].api_status()["sync"]["url"] == agg.url
        assert agents["gc"].api_status()["sync"]["state"] == "off"  # serverless by choice
        assert agents["gc"].uploader is None
        [ga_seen] = [m for m in agents["gc"].api_members() if m["name"] == "ga"]
        assert ga_seen["sync_urls"] == [agg.url]  # it did hear of it
        stream = agg.stream("gb", agents["gb"].store.store_id)
        for payload in stream.payloads.values():  # real results, as the aggregator reads them
            result = decode_result(payload)
            assert result.kind == "tcp" and not result.is_successful()
            assert summarize(payload)[:2] == ("tcp", False)  # the real aggregator's reading
        reports = stream.members
        assert reports is not None and {m.name for m in reports} >= {"ga", "gb"}  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()
