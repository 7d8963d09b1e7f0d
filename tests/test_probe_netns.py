"""Probes across real hops: a chain of network namespaces built by the test.

    prober (A) ──veth── router (R, forwarding) ──veth── target (B)
        └──veth (peer link down)── dark (D): an address that never answers

Every address lives inside these namespaces; they are deleted afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from meshmon import results as r
from tests.netns import add_namespace, sh, warm_up

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Chain:
    a: str
    r: str
    b: str
    d: str

    def run(self, *args: str, ns: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(["ip", "netns", "exec", ns or self.a, *args], capture_output=True,
                              text=True, timeout=60, cwd=ROOT)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc.stdout




@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    tag = uuid.uuid4().hex[:5]
    c = Chain(*(f"mm{tag}{x}" for x in "arbd"))
    names = [c.a, c.r, c.b, c.d]
    try:
        for ns in names:
            add_namespace(ns)
        links = [(c.a, c.r, 1, 2, 1), (c.r, c.b, 2, 1, 2), (c.a, c.d, 4, 1, 2)]
        for i, (n1, n2, net, h1, h2) in enumerate(links):
            a4, a6 = f"10.201.{net}.{h1}/24", f"fd00:201:{net}::{h1}/64"
            b4, b6 = f"10.201.{net}.{h2}/24", f"fd00:201:{net}::{h2}/64"
            e1, e2 = f"mmv{tag}{i}x", f"mmv{tag}{i}y"
            sh("ip", "link", "add", e1, "netns", n1, "type", "veth", "peer", "name", e2,
               "netns", n2)
            for ns, dev, v4, v6 in ((n1, e1, a4, a6), (n2, e2, b4, b6)):
                sh("ip", "-n", ns, "addr", "add", v4, "dev", dev)
                sh("ip", "-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad")
                if ns != c.d:  # the dark namespace keeps its link down: it never answers
                    sh("ip", "-n", ns, "link", "set", dev, "up")
        for ns, gw4, gw6 in ((c.a, "10.201.1.1", "fd00:201:1::1"),
                             (c.b, "10.201.2.1", "fd00:201:2::1")):
            sh("ip", "-n", ns, "route", "add", "10.201.2.0/24" if ns == c.a else "10.201.1.0/24",
               "via", gw4)
            sh("ip", "-n", ns, "-6", "route", "add",
               "fd00:201:2::/64" if ns == c.a else "fd00:201:1::/64", "via", gw6)
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                    "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0"):
            sh("ip", "netns", "exec", c.r, "sysctl", "-qw", key)
        for ns in (c.a, c.b):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.icmp.ratelimit=0")
        # The first IPv6 packets over fresh links wait ~1 s for neighbour discovery, as long
        # as a probe's reply timeout: let one echo through each way before measuring anything.
        for ns, peer in ((c.a, "fd00:201:2::2"), (c.b, "fd00:201:1::2")):
            warm_up(ns, peer)
        yield c
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


SCRIPT = r"""
import json, sys, trio
from meshmon.probes import IcmpEngine, IcmpConfig, ProbeContext, run_probe
from meshmon.results import to_dict
CASES = json.loads(sys.argv[1])
async def main():
    engine = IcmpEngine(IcmpConfig(mode=sys.argv[2]))
    engine.open()
    out = {}
    async with trio.open_nursery() as n:
        await n.start(engine.run)
        ctx = ProbeContext(agent="a", check="netns", icmp=engine)
        async def one(name, kind, target, params, timeout):
            (res,) = await run_probe(kind, target, params, timeout, ctx)
            out[name] = to_dict(res)
        async with trio.open_nursery() as m:
            for case in CASES:
                m.start_soon(one, *case)
        out["modes"] = engine.modes
        n.cancel_scope.cancel()
    print(json.dumps(out))
trio.run(main)
"""


def run_cases(chain: Chain, cases: list[tuple[str, str, str, dict[str, object], float]],
              mode: str = "auto", user: list[str] | None = None) -> dict[str, dict]:
    out = chain.run(*(user or []), sys.executable, "-c", SCRIPT, json.dumps(cases), mode)
    return json.loads(out.strip().splitlines()[-1])


def hops(res: dict) -> list[list[str]]:
    return [h["addresses"] for h in res["result"]["hops"]]


def test_multi_hop_traces_and_dark_targets(chain: Chain) -> None:
    fast = {"rounds": 2, "interval": 0.05, "max_hops": 6}
    cases = [
        ("icmp4", "trace", "10.201.2.2", fast, 3.0),
        ("icmp6", "trace", "fd00:201:2::2", fast, 3.0),
        ("udp4", "trace", "10.201.2.2", {**fast, "protocol": "udp"}, 3.0),
        ("tcp4", "trace", "10.201.2.2", {**fast, "protocol": "tcp", "port": 80}, 3.0),
        ("udp6", "trace", "fd00:201:2::2", {**fast, "protocol": "udp"}, 3.0),
        ("tcp6", "trace", "fd00:201:2::2", {**fast, "protocol": "tcp", "port": 80}, 3.0),
        ("ping_far", "ping", "10.201.2.2", {"count": 3, "interval": 0.01}, 2.0),
        ("dark_ping", "ping", "10.201.4.2", {"count": 2, "interval": 0.01}, 1.0),
        ("dark_ping6", "ping", "fd00:201:4::2", {"count": 2, "interval": 0.01}, 1.0),
        ("dark_tcp", "tcp", "10.201.4.2:80", {}, 1.0),
        ("dark_udp", "udp", "10.201.4.2:53", {}, 1.0),
        ("dark_http", "http", "http://10.201.4.2/", {}, 1.0),
        ("dark_tls", "tls", "10.201.4.2", {}, 1.0),
        ("dark_trace", "trace", "10.201.4.2", {"rounds": 1, "max_hops": 3}, 1.0),
    ]
    out = run_cases(chain, cases)
    for name in ("icmp4", "udp4", "tcp4"):
        res = out[name]["result"]
        assert res["target_reached"], (name, res)
        assert hops(out[name]) == [["10.201.1.1"], ["10.201.2.2"]], name
        assert res["hops"][0]["received"] == 2 and res["protocol"] == name[:-1]
    icmp6 = out["icmp6"]
    assert icmp6["family"] == 6 and icmp6["result"]["target_reached"], icmp6["result"]
    for name in ("icmp6", "udp6", "tcp6"):
        assert out[name]["result"]["target_reached"], out[name]["result"]
        assert hops(out[name]) == [["fd00:201:1::1"], ["fd00:201:2::2"]], name
    assert out["ping_far"]["result"]["successes"] == 3
    for name in ("dark_ping", "dark_ping6"):
        res = out[name]["result"]
        assert res["successes"] == 0 and res["failures"] == 2 and res["samples"] == [None, None]
    assert "timed out after 1s" in out["dark_tcp"]["result"]["error"]
    assert "no reply within 1s" in out["dark_udp"]["result"]["error"]
    assert "timed out after 1s" in out["dark_http"]["result"]["error"]
    assert "timed out after 1s" in out["dark_tls"]["result"]["error"]
    dark = out["dark_trace"]["result"]
    assert not dark["target_reached"] and dark["hops"] == []
    assert "no hop answered: 10.201.4.2 unreachable" in dark["errors"][0]
    for res in out.values():
        if "duration_ms" in res:
            assert res["duration_ms"] < 3500


def test_unprivileged_traces_in_datagram_mode(chain: Chain) -> None:
    chain.run("sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
    nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    fast = {"rounds": 2, "interval": 0.05, "max_hops": 6}
    out = run_cases(chain, [("icmp4", "trace", "10.201.2.2", fast, 3.0),
                            ("icmp6", "trace", "fd00:201:2::2", fast, 3.0),
                            ("ping", "ping", "10.201.2.2", {"count": 2, "interval": 0}, 2.0)],
                    user=nobody)
    assert out["modes"] == {"4": "dgram", "6": "dgram"}
    assert hops(out["icmp4"]) == [["10.201.1.1"], ["10.201.2.2"]]
    assert hops(out["icmp6"]) == [["fd00:201:1::1"], ["fd00:201:2::2"]]
    assert out["ping"]["result"]["successes"] == 2


def test_cli_trace_and_ping_as_a_user_runs_them(chain: Chain) -> None:
    table = chain.run(sys.executable, "-m", "meshmon", "probe", "trace", "10.201.2.2",
                      "--rounds", "2", "--max-hops", "5")
    assert "target reached" in table and "10.201.1.1" in table and "10.201.2.2" in table
    proc = subprocess.run(["ip", "netns", "exec", chain.a, sys.executable, "-m", "meshmon",
                           "probe", "ping", "10.201.4.2", "-c", "2", "-i", "0.01", "-t", "1",
                           "--json"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 1  # nothing answered
    res = json.loads(proc.stdout)
    assert res["kind"] == "ping" and res["result"]["successes"] == 0


def test_unreachable_target_error_says_what_was_seen_and_what_was_not(chain: Chain) -> None:
    """The router answers "host unreachable" at once (an unreachable route) or only after its
    ARP attempts fail (~3 s, a missing neighbour); the message has one shape either way."""
    chain.run("ip", "route", "replace", "unreachable", "10.201.9.0/24", ns=chain.r)
    chain.run("ip", "route", "replace", "10.201.9.0/24", "via", "10.201.1.1")
    cases = [
        ("route", "ping", "10.201.9.9", {"count": 5, "interval": 0.05}, 2.0),
        ("no_route", "ping", "10.201.77.1", {"count": 2, "interval": 0.05}, 1.0),
        ("arp_short", "ping", "10.201.2.99", {"count": 2, "interval": 0.05,
                                              "reply_timeout": 0.5}, 1.0),
        ("arp_long", "ping", "10.201.2.98", {"count": 2, "interval": 0.05,
                                             "reply_timeout": 4.5}, 5.0),
    ]  # fmt: skip
    out = run_cases(chain, cases)
    text = {}
    for name, res in out.items():
        if name != "modes":
            record = r.from_dict(res)
            assert not record.is_successful() and res["result"]["loss_pct"] == 100.0
            text[name] = record.error_message()
    # How many of the 5 the router answers depends on its route-error rate limit (burst 5, 1/s,
    # net.ipv4.route.error_cost: host-wide, not per namespace) and on what it sent just before:
    # the count varies, the shape does not.
    assert re.fullmatch(r"no reply to 5 echo requests; [1-5] host unreachable from 10\.201\.1\.1",
                        text["route"] or ""), text["route"]
    assert text["no_route"] == "no reply to 2 echo requests; 2 network unreachable (no route)"
    assert text["arp_short"] == "no reply to 2 echo requests"  # the router had not answered yet
    assert text["arp_long"] == "no reply to 2 echo requests; 2 host unreachable from 10.201.1.1"
