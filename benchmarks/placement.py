"""Placement: assignments moved on one join/leave vs the ideal K/N, load balance, compute time.

N = 1000 agents, 10,000 targets, k = 3. Measured in the same run against three other schemes a
designer would pick from: the plain consistent-hash ring (same vnodes, no load bound),
rendezvous hashing (HRW: each target's owners are the k agents with the highest
``score(agent, target)``; optimal moves, O(N) per target), and naive modulo placement (owners are
agents ``hash(target) mod N`` .. ``+k-1`` in the sorted member list; moves nearly everything).
Medians over several seeds. Run: ``python -m benchmarks.placement [--quick]``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import time

from meshmon.config import CheckConfig
from meshmon.membership import lan
from meshmon.membership.timing import expected_detection_time
from meshmon.placement import (
    DEFAULT_VNODES,
    AgentInfo,
    Placement,
    churn_timeline,
    coverage_gap,
    stable_hash,
)


def modulo_pairs(names: list[str], targets: list[str], k: int) -> set[tuple[str, str]]:
    """The naive scheme: position = hash mod N in the sorted member list."""
    order = sorted(names)
    n = len(order)
    return {(t, order[(stable_hash(t) + j) % n]) for t in targets for j in range(min(k, n))}


_MASK = 2**64 - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: a fast, well-spread 64-bit mix for HRW scores."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def hrw_seed(seed: int, n: int, n_targets: int, k: int) -> dict[str, float]:
    """Moves and balance of rendezvous hashing on the same kind of view as ``one_seed``.

    Each target's agents are ranked once by score over the view plus the joiner; the base, leave
    and join placements are the top k of that ranking without the joiner, without the agent that
    left, and with everyone (HRW's owners never depend on anything but the agents' scores).
    """
    rng = random.Random(seed)
    names = [f"agent-{seed}-{i}" for i in range(n)]
    targets = [f"10.{rng.randrange(256)}.{i // 256 % 256}.{i % 256}" for i in range(n_targets)]
    joiner, gone = f"joiner-{seed}", rng.choice(names)
    agents = [(stable_hash(x), x) for x in [*names, joiner]]
    base: set[tuple[str, str]] = set()
    leave: set[tuple[str, str]] = set()
    join: set[tuple[str, str]] = set()
    t0 = time.perf_counter()
    for t in targets:
        ht = stable_hash(t)
        ranked = [x for _, x in heapq.nlargest(k + 2, ((_mix(ha ^ ht), x) for ha, x in agents))]
        join.update((t, x) for x in ranked[:k])
        without = [x for x in ranked if x != joiner]
        base.update((t, x) for x in without[:k])
        leave.update((t, x) for x in [x for x in without if x != gone][:k])
    compute = time.perf_counter() - t0
    total = n_targets * k
    counts = dict.fromkeys(names, 0)
    for _, x in base:
        counts[x] += 1
    return {
        "leave_ratio": len(base - leave) / (total / n),
        "join_ratio": len(join - base) / (total / (n + 1)),
        "max_mean": max(counts.values()) / statistics.mean(counts.values()),
        "compute_s": compute,
    }


def one_seed(seed: int, n: int, n_targets: int, k: int, load_factor: float | None,
             vnodes: int) -> dict[str, float]:
    rng = random.Random(seed)
    names = [f"agent-{seed}-{i}" for i in range(n)]
    view = [AgentInfo(x) for x in names]
    targets = [f"10.{rng.randrange(256)}.{i // 256 % 256}.{i % 256}" for i in range(n_targets)]
    check = CheckConfig(name="ping-all", kind="ping", targets=tuple(targets), replicas=k)
    t0 = time.perf_counter()
    base = Placement(view, [check], vnodes=vnodes, load_factor=load_factor)
    compute = time.perf_counter() - t0
    pairs = base.pairs()
    loads = [base.load().get(x, 0) for x in names]
    gone = rng.choice(names)
    leave = Placement([a for a in view if a.name != gone], [check], vnodes=vnodes,
                      load_factor=load_factor).pairs()
    join = Placement([*view, AgentInfo(f"joiner-{seed}")], [check], vnodes=vnodes,
                     load_factor=load_factor).pairs()
    total = n_targets * k
    m_base = modulo_pairs(names, targets, k)
    m_leave = modulo_pairs([x for x in names if x != gone], targets, k)
    m_join = modulo_pairs([*names, f"joiner-{seed}"], targets, k)
    return {
        "leave_ratio": len(pairs - leave) / (total / n),
        "join_ratio": len(join - pairs) / (total / (n + 1)),
        "max_mean": max(loads) / statistics.mean(loads),
        "compute_s": compute,
        "mod_leave_ratio": len(m_base - m_leave) / (total / n),
        "mod_join_ratio": len(m_join - m_base) / (total / (n + 1)),
        "mod_moved_fraction": len(m_base - m_leave) / total,
    }


def churn_gap(seed: int, n: int, n_targets: int, k: int, failures: int,
              horizon: float) -> tuple[float, float]:
    """Coverage gap when ``failures`` agents die over ``horizon`` seconds and the mesh needs the
    LAN profile's expected detection time to drop each from the view.

    Returns:
        (gap fraction of target-time, detection delay used).
    """
    rng = random.Random(seed)
    view = [AgentInfo(f"agent-{seed}-{i}") for i in range(n)]
    targets = tuple(f"10.1.{i // 256 % 256}.{i % 256}" for i in range(n_targets))
    check = CheckConfig(name="ping-all", kind="ping", targets=targets, replicas=k)
    cfg = lan()
    delay = expected_detection_time(cfg.probe_interval, cfg.probe_timeout, n)
    dying = rng.sample([a.name for a in view], failures)
    events = [(horizon * (i + 0.5) / failures, name) for i, name in enumerate(dying)]
    return coverage_gap([check], churn_timeline(view, events, delay, horizon)), delay


def medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in rows), 4) for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer seeds (< 60 s)")
    args = parser.parse_args()
    n, n_targets, k = 1000, 10_000, 3
    seeds = range(3 if args.quick else 9)
    vn = DEFAULT_VNODES
    bounded = medians([one_seed(s, n, n_targets, k, 1.25, vn) for s in seeds])
    print(f"bounded loads (c=1.25, {vn} vnodes):", bounded, flush=True)
    plain = medians([one_seed(s, n, n_targets, k, None, vn) for s in seeds])
    print(f"plain ring ({vn} vnodes):", plain, flush=True)
    sweep = {}
    for v in (16, 64) if args.quick else (16, 64, 256):
        sweep[v] = medians([one_seed(100 + s, n, n_targets, k, None, v)
                             for s in range(1 if args.quick else 3)])["max_mean"]
    print("plain ring max/mean load by vnodes:", sweep, flush=True)
    # HRW ranks all N agents per target (O(N) each in pure Python): one seed in --quick.
    hrw = medians([hrw_seed(s, n, n_targets, k) for s in (seeds[:1] if args.quick else seeds)])
    print("rendezvous (HRW) hashing:", hrw, flush=True)
    gap, delay = churn_gap(7, n, n_targets, k, failures=3 if args.quick else 10, horizon=600.0)
    print(f"coverage gap under churn: {gap:.5f} (detection delay {delay:.2f}s)", flush=True)
    value = max(bounded["leave_ratio"], bounded["join_ratio"])
    base_value = max(hrw["leave_ratio"], hrw["join_ratio"])
    print(json.dumps({
        "bench": "placement",
        "metric": "moved assignments on one join/leave / ideal K/N (worse of the two, median)",
        "value": value,
        "vnodes": vn,
        "unit": "x ideal",
        "baseline": "rendezvous (HRW) hashing, same view and targets (minimal moves, O(N) per "
                    "target)",
        "baseline_value": base_value,
        "ratio": round(value / base_value, 5),
        "goal": "<= 1.2 moved/ideal, <= 1.25 max/mean load",
        "n_agents": n, "n_targets": n_targets, "k": k, "seeds": len(seeds),
        "leave_ratio": bounded["leave_ratio"], "join_ratio": bounded["join_ratio"],
        "max_mean_load": bounded["max_mean"],
        "compute_all_s": bounded["compute_s"],
        "max_mean_load_vs_hrw": round(bounded["max_mean"] / hrw["max_mean"], 4),
        "modulo": {"leave_ratio": bounded["mod_leave_ratio"],
                   "join_ratio": bounded["mod_join_ratio"],
                   "moved_fraction": bounded["mod_moved_fraction"]},
        "plain_ring": {"leave_ratio": plain["leave_ratio"], "join_ratio": plain["join_ratio"],
                       "max_mean_load": plain["max_mean"], "compute_all_s": plain["compute_s"]},
        "plain_ring_load_by_vnodes": sweep,
        "rendezvous_hrw": {"leave_ratio": hrw["leave_ratio"], "join_ratio": hrw["join_ratio"],
                           "max_mean_load": hrw["max_mean"],
                           "compute_all_s": hrw["compute_s"]},
        "coverage_gap_under_churn": round(gap, 6),
        "churn_model": f"{3 if args.quick else 10} kills in 600 s, each dropped from the view "
                       f"after the LAN expected detection time ({delay:.2f} s at N={n})",
    }))


if __name__ == "__main__":
    main()
