"""Benchmark: meshmon's traceroute against mtr on a 4-hop chain of network namespaces.

Run as root (it creates and deletes namespaces; needs ``mtr``, e.g. ``apt-get install
mtr-tiny``)::

    .venv/bin/python -m benchmarks.trace [--quick]

The chain ``prober ── r1 ── r2 ── r3 ── target`` keeps the kernel's default ICMP rate limits
(a burst of ~6 errors per destination, then 1/s), the ones real routers have. Each mode (ICMP,
UDP, TCP; UDP only with ``--quick``) is traced ``runs`` times by:

* meshmon with its default pacing (rounds 1 s apart, probes spread over the round in ascending
  TTL order, climbing stopped at the target);
* mtr (``mtr -n -j -c ROUNDS``, its default 1 s interval);
* meshmon with the old burst pacing (every TTL of a round at once, rounds 0.2 s apart:
  ``interval = 0.2, probe_spacing = 0``), to show what the pacing is for. These runs come last,
  after every meshmon and mtr run (which alternate), because they drain the routers' buckets.

Reported per tool: the share of runs that found the target at the right TTL (4) with the right
hop addresses, and the mean loss at the healthy hops (all of them here). ``value`` is meshmon's
share of right runs in UDP mode, ``baseline_value`` mtr's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOPS = ["10.203.1.2", "10.203.2.2", "10.203.3.2", "10.203.4.2"]
TARGET = HOPS[-1]
ROUNDS = 3

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
        ctx = ProbeContext(agent="bench", check="trace", icmp=engine)
        out = []
        for _ in range(runs):
            (res,) = await run_probe("trace", target, params, 10.0, ctx)
            out.append(to_dict(res)["result"])
        n.cancel_scope.cancel()
    print(json.dumps(out))
trio.run(main)
"""


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


def build_chain() -> list[str]:
    """Five namespaces joined by veth pairs; routers forward; ICMP rate limits untouched."""
    tag = uuid.uuid4().hex[:5]
    names = [f"mb{tag}{i}" for i in range(5)]
    for ns in names:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    for i in range(4):
        left, right = f"mbv{tag}{i}a", f"mbv{tag}{i}b"
        sh("ip", "link", "add", left, "netns", names[i], "type", "veth", "peer", "name", right,
           "netns", names[i + 1])  # fmt: skip
        for ns, dev, host in ((names[i], left, 1), (names[i + 1], right, 2)):
            sh("ip", "-n", ns, "addr", "add", f"10.203.{i + 1}.{host}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
    for i, ns in enumerate(names):
        if 0 < i < 4:
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        if i < 4:
            sh("ip", "-n", ns, "route", "add", "10.203.0.0/16", "via", f"10.203.{i + 1}.2")
        if i > 1:
            sh("ip", "-n", ns, "route", "add", "10.203.1.0/24", "via", f"10.203.{i}.1")
    return names


def meshmon_runs(ns: str, params: dict[str, object], runs: int) -> list[tuple[list[str], float]]:
    """(hop addresses, mean loss over hops) per run."""
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT, TARGET,
                           json.dumps(params), str(runs)], capture_output=True, text=True,
                          cwd=ROOT, timeout=30 + 12 * runs, check=True)  # fmt: skip
    out = []
    for res in json.loads(proc.stdout.strip().splitlines()[-1]):
        hops = [h["addresses"][0] if h["addresses"] else "???" for h in res["hops"]]
        losses = [1 - h["received"] / h["sent"] for h in res["hops"] if h["sent"]]
        out.append((hops, statistics.fmean(losses) if losses else 1.0))
    return out


def mtr_run(ns: str, mode: list[str]) -> tuple[list[str], float]:
    """(hop addresses, mean loss over hops) of one mtr report."""
    proc = subprocess.run(["ip", "netns", "exec", ns, "mtr", "-n", "-j", "-c", str(ROUNDS),
                           *mode, TARGET], capture_output=True, text=True, timeout=60,
                          check=True)  # fmt: skip
    hubs = json.loads(proc.stdout)["report"]["hubs"]
    return [h["host"] for h in hubs], statistics.fmean(h["Loss%"] / 100 for h in hubs)


def mode_params(mode: str) -> dict[str, object]:
    """meshmon trace params for ``mode`` with the default pacing."""
    params: dict[str, object] = {"protocol": mode, "rounds": ROUNDS, "max_hops": 30}
    if mode == "tcp":
        params["port"] = 80
    return params


def summarize(rows: list[tuple[list[str], float]]) -> dict[str, float]:
    """Share of runs with exactly the right hops; mean loss at (healthy) hops."""
    return {"right": sum(h == HOPS for h, _ in rows) / len(rows),
            "loss_pct": 100 * statistics.fmean(loss for _, loss in rows)}  # fmt: skip


def main() -> None:
    """Build the chain, trace, print the JSON summary last, remove the chain."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="UDP only, 4 runs (< 60 s)")
    parser.add_argument("--runs", type=int, default=0, help="runs per tool and mode")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("mtr") is None:
        raise SystemExit("run as root with mtr installed (apt-get install mtr-tiny)")
    runs = args.runs or (4 if args.quick else 10)
    modes = {"udp": ["-u"]} if args.quick else {"icmp": [], "udp": ["-u"],
                                                "tcp": ["-T", "-P", "80"]}  # fmt: skip
    names = build_chain()
    table: dict[str, dict[str, dict[str, float]]] = {}
    try:
        # Burst runs drain the routers' token buckets for seconds afterwards, so they all come
        # last; meshmon and mtr alternate run by run on a chain whose buckets are full.
        for mode, flags in modes.items():
            params = mode_params(mode)
            rows: dict[str, list[tuple[list[str], float]]] = {"meshmon": [], "mtr": []}
            for _ in range(runs):
                rows["meshmon"] += meshmon_runs(names[0], params, 1)
                rows["mtr"].append(mtr_run(names[0], flags))
            table[mode] = {tool: summarize(r) for tool, r in rows.items()}
        for mode in modes:
            burst = {**mode_params(mode), "interval": 0.2, "probe_spacing": 0.0}
            table[mode]["burst"] = summarize(meshmon_runs(names[0], burst, runs))
        for mode, row in table.items():
            for tool, stats in row.items():
                print(f"{mode:4} {tool:8} right hops in {stats['right']:.0%} of runs, mean hop "
                      f"loss {stats['loss_pct']:.1f} %", file=sys.stderr)  # fmt: skip
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
    udp = table["udp"]
    summary: dict[str, object] = {
        "bench": "trace",
        "metric": "UDP traces with the right hop count and addresses (4-hop netns chain, "
                  "default ICMP rate limits)",
        "value": udp["meshmon"]["right"],
        "unit": "fraction of runs",
        "baseline": f"mtr -u -c {ROUNDS}",
        "baseline_value": udp["mtr"]["right"],
        "ratio": round(udp["meshmon"]["right"] / udp["mtr"]["right"], 3)
        if udp["mtr"]["right"] else None,
        "runs": runs,
    }
    for mode, row in table.items():
        for tool, stats in row.items():
            summary[f"{mode}_{tool}_right"] = stats["right"]
            summary[f"{mode}_{tool}_hop_loss_pct"] = round(stats["loss_pct"], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
