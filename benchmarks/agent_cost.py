"""What a real agent costs its host: CPU per probe at 1000 pings/s, and an idle agent's footprint.

Run as root (raw ICMP) with Debian's ``fping`` installed::

    .venv/bin/python -m benchmarks.agent_cost [--quick]

Everything is measured on real processes from /proc, in one run:

* **Loaded agent** (headline): ``meshmon agent run`` with one ping check over 1000 loopback
  targets (127.1.x.y) at a 1 s interval, results stored in its ring store. CPU seconds per
  window from /proc/PID/stat, resident set from /proc/PID/statm, probes counted from the
  results the agent stored (``results_written`` in its status) and bytes per stored result from
  its store's size. Baseline: ``fping -l -p 1000 -i 1`` over the same targets at the same rate.
* **Idle agent**: a 10-agent mesh with no checks, once every agent sees 10 alive; CPU % and RSS
  per agent (medians over the 10). Baseline: a bare ``python -c 'trio.run(sleep_forever)'``,
  the floor any trio program pays (the issue quotes a Serf agent at 14.7 MiB / 0.27 %).

Medians over several windows; the last line is the JSON summary (``value`` = the agent's CPU
per probe in µs, ``baseline_value`` = fping's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.realproc import Mesh, cpu_seconds, rss_bytes, wait_for

N_TARGETS = 1000
MIB = 2**20


def targets(n: int = N_TARGETS) -> list[str]:
    """127.1.x.y for x in 0.., y in 1..250 (the kernel answers them all on lo)."""
    return [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(n)]


def loaded_check(hosts: list[str]) -> str:
    listed = ", ".join(f'"{h}"' for h in hosts)
    return f"""\
[store]
max_bytes = "512MiB"
[[checks]]
name = "ping-1k"
kind = "ping"
interval = "1s"
timeout = "1s"
replicas = 1
targets = [{listed}]
params = {{ count = 1 }}
"""


def measure_windows(pid: int, windows: int, seconds: float,
                    count: object = None) -> list[dict[str, float]]:  # fmt: skip
    """CPU %, RSS and (if ``count`` is a callable) events per second over each window."""
    rows = []
    for _ in range(windows):
        c0, t0 = cpu_seconds(pid), time.monotonic()
        n0 = count() if callable(count) else 0
        time.sleep(seconds)
        c1, t1 = cpu_seconds(pid), time.monotonic()
        n1 = count() if callable(count) else 0
        rows.append({"cpu_s": c1 - c0, "wall_s": t1 - t0, "events": n1 - n0,
                     "rss": rss_bytes(pid)})  # fmt: skip
    return rows


def loaded_agent(root: Path, windows: int, seconds: float) -> dict[str, float]:
    mesh = Mesh(root / "loaded")
    try:
        agent = mesh.start("probe-1", 2, extra=loaded_check(targets()))
        mesh.wait_up(agent)
        written = lambda: int(agent.api("status")["results_written"])  # noqa: E731
        wait_for("results to flow", lambda: written() > 2 * N_TARGETS, 60)
        rows = measure_windows(agent.pid, windows, seconds, written)
        status = agent.api("status")
        store = status.get("store", {})
        per_probe = [r["cpu_s"] / r["events"] * 1e6 for r in rows if r["events"]]
        return {
            "cpu_us_per_probe": statistics.median(per_probe),
            "cpu_percent": statistics.median(100 * r["cpu_s"] / r["wall_s"] for r in rows),
            "probes_per_s": statistics.median(r["events"] / r["wall_s"] for r in rows),
            "rss_mib": statistics.median(r["rss"] for r in rows) / MIB,
            "bytes_per_result": store.get("bytes", 0) / max(1, store.get("records", 0)),
            "stored_records": store.get("records", 0),
        }
    finally:
        mesh.close()


def fping_loaded(windows: int, seconds: float) -> dict[str, float]:
    cmd = ["fping", "-l", "-q", "-p", "1000", "-i", "1", "-t", "1000", "-r", "0", *targets()]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.0)  # one full round out before measuring
        rows = measure_windows(proc.pid, windows, seconds)
    finally:
        proc.terminate()
        proc.wait()
    # fping -l -p 1000 pings each target once a second: N_TARGETS probes per wall second
    return {
        "cpu_us_per_probe": statistics.median(r["cpu_s"] / (N_TARGETS * r["wall_s"]) * 1e6
                                              for r in rows),
        "cpu_percent": statistics.median(100 * r["cpu_s"] / r["wall_s"] for r in rows),
        "rss_mib": statistics.median(r["rss"] for r in rows) / MIB,
    }


def idle_mesh(root: Path, size: int, seconds: float) -> dict[str, float]:
    mesh = Mesh(root / "idle", port=28946)
    try:
        first = mesh.start("idle-1", 2)
        mesh.wait_up(first)
        seed = f"127.0.0.2:{mesh.port}"
        procs = [first] + [mesh.start(f"idle-{i}", i + 1, [seed]) for i in range(2, size + 1)]
        for p in procs:  # all started at once; each is waited for only after
            mesh.wait_up(p)

        def all_alive() -> bool:
            return all(sum(m["state"] == "alive" for m in p.api("members")) == size
                       for p in procs)  # fmt: skip

        wait_for(f"all {size} agents to see {size} alive", all_alive, 120)
        time.sleep(2.0)  # let the join's push-pulls and gossip settle before measuring idle
        c0 = {p.pid: cpu_seconds(p.pid) for p in procs}
        t0 = time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - t0
        cpu = [100 * (cpu_seconds(p.pid) - c0[p.pid]) / wall for p in procs]
        rss = [rss_bytes(p.pid) / MIB for p in procs]
        return {"cpu_percent": statistics.median(cpu), "rss_mib": statistics.median(rss),
                "cpu_percent_max": max(cpu), "rss_mib_max": max(rss)}  # fmt: skip
    finally:
        mesh.close()


def bare_trio(seconds: float) -> dict[str, float]:
    code = "import trio; trio.run(trio.sleep_forever)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.5)
        rows = measure_windows(proc.pid, 1, seconds)
    finally:
        proc.terminate()
        proc.wait()
    return {"cpu_percent": 100 * rows[0]["cpu_s"] / rows[0]["wall_s"],
            "rss_mib": rows[0]["rss"] / MIB}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer, shorter windows (< 60 s)")
    args = parser.parse_args()
    if shutil.which("fping") is None:
        sys.exit("benchmarks.agent_cost needs fping: apt-get install fping")
    windows, seconds = (3, 2.0) if args.quick else (5, 10.0)
    idle_seconds = 5.0 if args.quick else 30.0
    root = Path(tempfile.mkdtemp(prefix="meshmon-agent-cost-"))
    try:
        agent = loaded_agent(root, windows, seconds)
        print("agent at 1000 probes/s:", agent, flush=True)
        fping = fping_loaded(windows, seconds)
        print("fping -l at 1000 probes/s:", fping, flush=True)
        idle = idle_mesh(root, 10, idle_seconds)
        print("idle agent in a 10-agent mesh:", idle, flush=True)
        floor = bare_trio(min(idle_seconds, 3.0) if args.quick else idle_seconds)
        print("bare trio process:", floor, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    r2 = lambda x: round(x, 2)  # noqa: E731
    print(json.dumps({
        "bench": "agent_cost",
        "metric": "agent CPU per stored ping probe at 1000 probes/s (real agent process)",
        "value": r2(agent["cpu_us_per_probe"]),
        "unit": "us CPU per probe",
        "baseline": "fping -l -p 1000 -i 1 over the same 1000 loopback targets",
        "baseline_value": r2(fping["cpu_us_per_probe"]),
        "ratio": r2(agent["cpu_us_per_probe"] / fping["cpu_us_per_probe"]),
        "goal": "<= 5 % of a core at 1000 probes/s, <= 1.5x fping per probe; idle <= 40 MiB, "
                "<= 0.3 % CPU; <= 60 B per stored result",
        "agent_cpu_percent_at_1000_per_s": r2(agent["cpu_percent"]),
        "agent_probes_stored_per_s": r2(agent["probes_per_s"]),
        "agent_rss_mib_loaded": r2(agent["rss_mib"]),
        "bytes_per_stored_result": r2(agent["bytes_per_result"]),
        "fping_cpu_percent": r2(fping["cpu_percent"]),
        "idle_agent_cpu_percent": round(idle["cpu_percent"], 3),
        "idle_agent_rss_mib": r2(idle["rss_mib"]),
        "idle_agent_cpu_percent_max": round(idle["cpu_percent_max"], 3),
        "idle_agent_rss_mib_max": r2(idle["rss_mib_max"]),
        "bare_trio_rss_mib": r2(floor["rss_mib"]),
        "bare_trio_cpu_percent": round(floor["cpu_percent"], 3),
        "windows": windows, "window_s": seconds,
    }))


if __name__ == "__main__":
    main()
