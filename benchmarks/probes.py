"""Benchmark: meshmon's ICMP engine against fping on the same 1000 loopback targets.

Run as root (raw ICMP) with Debian's ``fping`` installed::

    .venv/bin/python -m benchmarks.probes [--quick]

Measured side by side in one run, on 1000 targets 127.1.x.y, each pinged ``count`` times with
``period`` between a target's packets and no pause between targets (``fping -i 0``):

* echo replies per second (wall clock) and CPU seconds per 1000 probes, for both;
* lost replies for both;
* RTT accuracy: per target, the median RTT by meshmon and by fping; the benchmark reports the
  median over targets of their absolute difference (µs);
* headline: CPU per probe while sustaining 1000 probes/s (each target pinged once a second,
  evenly spread) through :func:`run_probe_batch_encoded` on the scheduler's own tick
  (``SchedulerConfig.tick``), which is the path the agent takes from due assignments to the
  bytes it stores, against ``fping -l`` pinging the same targets at the same rate in the same
  run; for comparison: the engine alone, :func:`run_probe_batch` (result objects, the path
  before stored bytes were built straight from the echoes), one :func:`run_probe` per target,
  one task per target. (The whole agent process, with its scheduler and store, is measured by
  ``benchmarks.agent_cost``: that is issue 9's headline.)
* echo throughput: one echo request per target (``count = 1``), so neither tool waits out a
  per-target period and the rate measures the engine.

Each tool runs ``rounds`` times, alternating; medians are reported. The last line is the JSON
summary (``value`` = meshmon's CPU µs per probe, ``baseline_value`` = fping's).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time

import trio

from benchmarks.agent_cost import fping_loaded
from meshmon.probes import ProbeContext, run_probe, run_probe_batch
from meshmon.probes.batch import run_probe_batch_encoded
from meshmon.probes.icmp import IcmpConfig, IcmpEngine
from meshmon.scheduler import SchedulerConfig

N_TARGETS = 1000
HEADLINE = "run_probe_batch_encoded"
HOWS = (HEADLINE, "run_probe_batch", "ping_many", "run_probe", "task_per_target")
TICK = SchedulerConfig().tick
"""The agent's scheduler granularity: probes due within one tick go out together."""


def targets(n: int = N_TARGETS) -> list[str]:
    """127.1.x.y for x in 0.., y in 1..250."""
    return [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(n)]


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_fping(hosts: list[str], count: int, period_ms: int, timeout_ms: int) -> dict[str, object]:
    """One fping run; RTTs per host, replies, lost, wall and CPU time."""
    cmd = ["fping", "-C", str(count), "-q", "-i", "0", "-p", str(period_ms), "-t",
           str(timeout_ms), "-B", "1", "-r", "0", *hosts]  # fmt: skip
    cpu0 = _cpu(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    cpu = _cpu(resource.RUSAGE_CHILDREN) - cpu0
    rtts: dict[str, list[float]] = {}
    lost = 0
    for line in proc.stderr.splitlines():
        if " : " not in line:
            continue
        host, _, values = line.partition(" : ")
        samples = values.split()
        lost += samples.count("-")
        rtts[host.strip()] = [float(v) for v in samples if v != "-"]
    lost += (len(hosts) - len(rtts)) * count
    replies = sum(len(v) for v in rtts.values())
    return {"wall": wall, "cpu": cpu, "replies": replies, "lost": lost, "rtts": rtts}


async def _meshmon_burst(engine: IcmpEngine, hosts: list[str], count: int, period_ms: int,
                         timeout_ms: int) -> dict[str, list[float]]:  # fmt: skip
    # One call for all targets, as the scheduler batches checks that fall due together.
    rows = await engine.ping_many([(h, 4) for h in hosts], count=count,
                                  interval=period_ms / 1000, reply_timeout=timeout_ms / 1000)
    return {h: [e.rtt_ms for e in row if e.kind == "reply" and e.rtt_ms is not None]
            for h, row in zip(hosts, rows, strict=True)}  # fmt: skip


def run_meshmon(engine: IcmpEngine, hosts: list[str], count: int, period_ms: int,
                timeout_ms: int) -> dict[str, object]:  # fmt: skip
    """One meshmon run on an already started engine (called from a trio thread)."""
    cpu0 = _cpu(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    rtts = trio.from_thread.run(_meshmon_burst, engine, hosts, count, period_ms, timeout_ms)
    wall = time.perf_counter() - t0
    cpu = _cpu(resource.RUSAGE_SELF) - cpu0
    replies = sum(len(v) for v in rtts.values())
    return {"wall": wall, "cpu": cpu, "replies": replies,
            "lost": len(hosts) * count - replies, "rtts": rtts}  # fmt: skip


async def sustained_cpu(engine: IcmpEngine, hosts: list[str], seconds: float,
                        how: str) -> dict[str, float]:
    """CPU % of this process while pinging every host once a second, evenly spread.

    ``how``:

    * ``run_probe_batch_encoded`` — a scheduler that wakes every ``TICK`` and hands the
      targets that fell due to :func:`run_probe_batch_encoded` (the stored bytes built, as the
      agent does);
    * ``run_probe_batch`` — the same ticks into :func:`run_probe_batch` (result objects);
    * ``ping_many`` — the same ticks straight into the engine (no result objects);
    * ``run_probe`` — the same ticks, one :func:`run_probe` task per due target;
    * ``task_per_target`` — no ticks: one task per target sleeping until its own slot.
    """
    rate = len(hosts)
    sent = 0
    start = trio.current_time() + 0.2
    ctx = ProbeContext(agent="bench", check="ping", icmp=engine)

    async def pinger(i: int, host: str) -> None:
        nonlocal sent
        k = 0
        while True:
            await trio.sleep_until(start + i / rate + k)
            await engine.ping(host, 4, count=1, reply_timeout=0.5)
            sent += 1
            k += 1

    async def batch(due: list[str]) -> None:
        nonlocal sent
        if how == "ping_many":
            await engine.ping_many([(h, 4) for h in due], count=1, reply_timeout=0.5)
        elif how == HEADLINE:
            await run_probe_batch_encoded("ping", due, {"count": 1}, 1.0, ctx)
        else:
            await run_probe_batch("ping", due, {"count": 1}, 1.0, ctx)
        sent += len(due)

    async def check(host: str) -> None:
        nonlocal sent
        await run_probe("ping", host, {"count": 1}, 1.0, ctx)
        sent += 1

    async def ticker(nursery: trio.Nursery) -> None:
        n = 0
        per_tick = max(1, round(rate * TICK))
        while True:
            await trio.sleep_until(start + n * TICK)
            first = (n * per_tick) % rate
            due = hosts[first:first + per_tick]
            if how == "run_probe":
                for h in due:
                    nursery.start_soon(check, h)
            else:
                nursery.start_soon(batch, due)
            n += 1

    async with trio.open_nursery() as nursery:
        if how == "task_per_target":
            for i, host in enumerate(hosts):
                nursery.start_soon(pinger, i, host)
        else:
            nursery.start_soon(ticker, nursery)
        await trio.sleep_until(start + 1.0)  # warm-up second
        cpu0, t0, s0 = _cpu(resource.RUSAGE_SELF), time.perf_counter(), sent
        await trio.sleep(seconds)
        cpu, wall, done = _cpu(resource.RUSAGE_SELF) - cpu0, time.perf_counter() - t0, sent - s0
        nursery.cancel_scope.cancel()
    return {"cpu_percent": 100 * cpu / wall, "probes_per_s": done / wall}


def accuracy_us(mm: dict[str, list[float]], fp: dict[str, list[float]]) -> float | None:
    """Median over targets of |median meshmon RTT - median fping RTT|, in µs."""
    diffs = [abs(statistics.median(mm[h]) - statistics.median(fp[h])) * 1000
             for h in mm if mm.get(h) and fp.get(h)]  # fmt: skip
    return statistics.median(diffs) if diffs else None


def main() -> None:
    """Run the benchmark and print the JSON summary last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (< 60 s)")
    args = parser.parse_args()
    if shutil.which("fping") is None:
        sys.exit("fping is not installed: apt-get install -y fping")
    rounds, count, sustain = (3, 1, 5.0) if args.quick else (5, 1, 15.0)
    period_ms, timeout_ms = 1, 1000  # one request per target: the rate measures the engines
    hosts = targets()
    mm_runs: list[dict[str, object]] = []
    fp_runs: list[dict[str, object]] = []

    async def amain() -> dict[str, object]:
        engine = IcmpEngine(IcmpConfig(families=(4,)))
        engine.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            for _ in range(rounds):
                mm_runs.append(await trio.to_thread.run_sync(
                    run_meshmon, engine, hosts, count, period_ms, timeout_ms))
                fp_runs.append(await trio.to_thread.run_sync(
                    run_fping, hosts, count, period_ms, timeout_ms))
            sus: dict[str, object] = {"mode": engine.modes[4]}
            for how in HOWS:
                sus[how] = await sustained_cpu(engine, hosts, sustain, how)
            nursery.cancel_scope.cancel()
        return sus

    sustained = trio.run(amain)
    windows = 3 if args.quick else 5
    fping_l = fping_loaded(windows, sustain / windows * 2)

    def med(runs: list[dict[str, object]], key: str) -> float:
        return statistics.median(float(r[key]) for r in runs)  # type: ignore[arg-type]

    def rate(run: dict[str, object]) -> float:
        return float(run["replies"]) / float(run["wall"])  # type: ignore[arg-type]

    probes = len(hosts) * count

    def cpu_of(how: str) -> float:
        return round(float(sustained[how]["cpu_percent"]), 2)  # type: ignore[index]
    mm_rate = statistics.median(rate(r) for r in mm_runs)
    fp_rate = statistics.median(rate(r) for r in fp_runs)
    acc = [accuracy_us(m["rtts"], f["rtts"]) for m, f in zip(mm_runs, fp_runs, strict=True)]  # type: ignore[arg-type]
    acc_values = [a for a in acc if a is not None]
    for i, (m, f) in enumerate(zip(mm_runs, fp_runs, strict=True)):
        print(f"round {i + 1}: meshmon {rate(m):8.0f} echo/s lost {m['lost']:4} cpu "
              f"{m['cpu']:.3f}s | fping {rate(f):8.0f} echo/s lost {f['lost']:4} cpu "
              f"{f['cpu']:.3f}s | accuracy {acc[i]} us")
    path_us = cpu_of(HEADLINE) * 10_000 / float(
        sustained[HEADLINE]["probes_per_s"])  # type: ignore[index]
    summary = {
        "bench": "probes",
        "metric": f"CPU per ping probe at 1000 probes/s on the agent's path ({TICK * 1000:g} ms "
                  "ticks into run_probe_batch_encoded, stored bytes built)",
        "value": round(path_us, 2),
        "unit": "us CPU per probe",
        "baseline": "fping -l -p 1000 -i 1 on the same 1000 loopback targets, same run",
        "baseline_value": round(fping_l["cpu_us_per_probe"], 2),
        "ratio": round(path_us / fping_l["cpu_us_per_probe"], 3),
        "echo_replies_per_s": round(mm_rate, 1),
        "fping_echo_replies_per_s": round(fp_rate, 1),
        "echo_rate_ratio": round(mm_rate / fp_rate, 3) if fp_rate else None,
        "echo_rate_setting": "one request per target (-C 1 -i 0), nothing waits out a period",
        "targets": len(hosts),
        "count_per_target": count,
        "rounds": rounds,
        "meshmon_cpu_s_per_1000_probes": round(med(mm_runs, "cpu") / probes * 1000, 4),
        "fping_cpu_s_per_1000_probes": round(med(fp_runs, "cpu") / probes * 1000, 4),
        "meshmon_lost_replies": int(med(mm_runs, "lost")),
        "fping_lost_replies": int(med(fp_runs, "lost")),
        "rtt_median_abs_diff_us": round(statistics.median(acc_values), 2) if acc_values else None,
        "agent_cpu_percent_at_1000_probes_per_s": cpu_of(HEADLINE),
        "sustained_probes_per_s": round(
            sustained[HEADLINE]["probes_per_s"], 1),  # type: ignore[index]
        "sustained_scheduler": f"{TICK * 1000:g} ms ticks; due targets to {HEADLINE}",
        "agent_cpu_percent_result_objects": cpu_of("run_probe_batch"),
        "agent_cpu_percent_engine_only": cpu_of("ping_many"),
        "agent_cpu_percent_run_probe_per_target": cpu_of("run_probe"),
        "agent_cpu_percent_task_per_target": cpu_of("task_per_target"),
        "icmp_socket_mode": sustained["mode"],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
