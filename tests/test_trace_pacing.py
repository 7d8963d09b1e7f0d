"""Traceroute pacing across a 4-hop chain of network namespaces with the kernel's default ICMP
rate limits (a burst of ~6 errors per destination, then 1/s), compared with mtr.

    prober ── r1 ── r2 ── r3 ── target     link n: 10.202.n.0/24 and fd00:202:n::/64, the left
                                          end .1 / ::1, the right end .2 / ::2

Every address lives inside namespaces this module creates and deletes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.netns import add_namespace, sh, warm_up

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOPS4 = ["10.202.1.2", "10.202.2.2", "10.202.3.2", "10.202.4.2"]
HOPS6 = ["fd00:202:1::2", "fd00:202:2::2", "fd00:202:3::2", "fd00:202:4::2"]
TARGET4, TARGET6 = HOPS4[-1], HOPS6[-1]




@pytest.fixture(scope="module")
def chain() -> Iterator[list[str]]:
    """Namespaces [prober, r1, r2, r3, target]; routers forward; rate limits left at default."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    tag = uuid.uuid4().hex[:5]
    names = [f"mp{tag}{i}" for i in range(5)]
    try:
        for ns in names:
            add_namespace(ns)
        for i in range(4):  # link i joins names[i] (.1) and names[i+1] (.2) on 10.202.{i+1}.0/24
            left, right = f"mpv{tag}{i}a", f"mpv{tag}{i}b"
            sh("ip", "link", "add", left, "netns", names[i], "type", "veth", "peer", "name",
               right, "netns", names[i + 1])
            for ns, dev, host in ((names[i], left, 1), (names[i + 1], right, 2)):
                sh("ip", "-n", ns, "addr", "add", f"10.202.{i + 1}.{host}/24", "dev", dev)
                sh("ip", "-n", ns, "-6", "addr", "add", f"fd00:202:{i + 1}::{host}/64", "dev",
                   dev, "nodad")
                sh("ip", "-n", ns, "link", "set", dev, "up")
        for i, ns in enumerate(names):
            if 0 < i < 4:
                sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
                sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            if i < 4:  # towards the target: via the next namespace
                sh("ip", "-n", ns, "route", "add", "10.202.0.0/16", "via", f"10.202.{i + 1}.2")
                sh("ip", "-n", ns, "-6", "route", "add", "fd00:202::/32", "via",
                   f"fd00:202:{i + 1}::2")
            if i > 1:  # back towards the prober: via the previous one
                sh("ip", "-n", ns, "route", "add", "10.202.1.0/24", "via", f"10.202.{i}.1")
                sh("ip", "-n", ns, "-6", "route", "add", "fd00:202:1::/64", "via",
                   f"fd00:202:{i}::1")
        # neighbour discovery on fresh links holds the first IPv6 packets ~1 s: done once here
        warm_up(names[0], TARGET6)
        yield names
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


SCRIPT = r"""
import json, sys, trio
from meshmon.probes import IcmpEngine, ProbeContext, run_probe
from meshmon.results import to_dict
target, params, runs = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
async def main():
    engine = IcmpEngine()
    engine.open()
    async with trio.open_nursery() as n:
        await n.start(engine.run)
        ctx = ProbeContext(agent="a", check="pacing", icmp=engine)
        out = []
        for _ in range(runs):  # one after another, as a scheduler runs one check
            (res,) = await run_probe("trace", target, params, 10.0, ctx)
            out.append(to_dict(res)["result"])
        n.cancel_scope.cancel()
    print(json.dumps(out))
trio.run(main)
"""


def traces(chain: list[str], target: str, params: dict[str, object], runs: int) -> list[dict]:
    proc = subprocess.run(["ip", "netns", "exec", chain[0], sys.executable, "-c", SCRIPT, target,
                           json.dumps(params), str(runs)], capture_output=True, text=True,
                          timeout=30 + 10 * runs, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def mtr_hops(chain: list[str], target: str, mode: list[str]) -> list[str]:
    proc = subprocess.run(["ip", "netns", "exec", chain[0], "mtr", "-n", "-j", "-c", "3", *mode,
                           target], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [h["host"] for h in json.loads(proc.stdout)["report"]["hubs"]]


def assert_clean(res: dict, expected: list[str]) -> None:
    """Every hop right, in order, at the right TTL, and no probe lost on the way."""
    assert res["target_reached"], res
    assert [h["addresses"] for h in res["hops"]] == [[a] for a in expected], res["hops"]
    assert [h["ttl"] for h in res["hops"]] == [1, 2, 3, 4]
    assert [(h["received"], h["sent"]) for h in res["hops"]] == [(2, 2)] * 4, res["hops"]


def test_udp_traces_find_the_target_at_the_right_ttl_every_time_without_loss(
    chain: list[str],
) -> None:
    runs = traces(chain, TARGET4, {"protocol": "udp", "rounds": 2}, 10)
    assert len(runs) == 10
    for res in runs:
        assert_clean(res, HOPS4)


@pytest.mark.parametrize(("target", "params", "expected"), [
    (TARGET4, {"protocol": "icmp"}, HOPS4),
    (TARGET4, {"protocol": "tcp", "port": 80}, HOPS4),
    (TARGET6, {"protocol": "udp"}, HOPS6),
    (TARGET6, {"protocol": "icmp"}, HOPS6),
], ids=["icmp4", "tcp4", "udp6", "icmp6"])  # fmt: skip
def test_other_modes_and_ipv6_are_clean_too(chain: list[str], target: str,
                                            params: dict[str, object],
                                            expected: list[str]) -> None:  # fmt: skip
    for res in traces(chain, target, {**params, "rounds": 2}, 1):
        assert_clean(res, expected)


@pytest.mark.skipif(shutil.which("mtr") is None, reason="mtr not installed (apt-get install "
                    "mtr-tiny)")  # fmt: skip
@pytest.mark.parametrize("mode", [[], ["-u"], ["-T", "-P", "80"]], ids=["icmp", "udp", "tcp"])
def test_hops_match_mtr(chain: list[str], mode: list[str]) -> None:
    protocol = {"-u": "udp", "-T": "tcp"}.get(mode[0] if mode else "", "icmp")
    ours = traces(chain, TARGET4, {"protocol": protocol, "rounds": 2, "port":
                                   80 if protocol == "tcp" else 33434}, 1)[0]
    assert [h["addresses"][0] for h in ours["hops"]] == mtr_hops(chain, TARGET4, mode) == HOPS4
