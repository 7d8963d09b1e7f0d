"""Startup under load: N real agents started together on one machine until all see N alive.

Run::

    .venv/bin/python -m benchmarks.startup [--quick] [--agents N]

Starts ``N`` (50; 20 with ``--quick``) ``meshmon agent run`` processes at once on 127.0.0.2 ..,
every one with the first as its seed, and measures the wall time until every agent lists ``N``
alive members (none of them suspected), plus the key exchanges and joins that failed on the way
(log lines). ``members_s`` is when every agent lists all ``N`` as members, alive or suspect:
SWIM's membership, and what ``serf members`` shows as alive (Serf does not expose memberlist's
suspicion), so the figure to hold against Serf's. Baseline in
the same run: the same N processes running ``meshmon config check`` on their configs at once,
the floor any agent pays before it can say a word (interpreter start, imports, config and
certificate loading on a machine with 2 cores shared by N processes).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.realproc import Mesh, cpu_seconds

FAILURE = re.compile(r"TooSlowError|no answer to|key exchange .*fail|handshake .*fail|"
                     r"did not finish within|push-pull .*fail|join failed|Traceback",
                     re.IGNORECASE)  # fmt: skip
"""A key exchange, join or handshake that failed (either end's log line)."""
WARNING = re.compile(r" (WARNING|ERROR) +([\w.]+): (.{0,60})")


def config_check_floor(mesh: Mesh) -> float:
    """Wall time for every agent's ``config check`` run at once."""
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "meshmon", "config", "check",
                               str(p.folder / "agent.toml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for p in mesh.procs]  # fmt: skip
    for proc in procs:
        proc.wait()
    return time.monotonic() - t0


def start_all(root: Path, n: int, timeout: float) -> dict[str, Any]:
    mesh = Mesh(root, port=29946)
    try:
        seed = f"127.0.0.2:{mesh.port}"
        for i in range(1, n + 1):
            mesh.prepare(f"s{i}", i + 1, [] if i == 1 else [seed])
        t0 = time.monotonic()
        procs = [mesh.launch(f"s{i}", i + 1) for i in range(1, n + 1)]
        seen: dict[str, float] = {}
        up: dict[str, tuple[float, float]] = {}  # first answer: (seconds since start, CPU)
        listed: dict[str, float] = {}  # all n members, alive or suspect (SWIM's members)
        deadline = t0 + timeout
        while len(seen) < n and time.monotonic() < deadline:
            for p in procs:
                if p.name in seen:
                    continue
                if p.proc.poll() is not None:
                    raise RuntimeError(f"{p.name} exited:\n{p.log_text()[-2000:]}")
                try:
                    members = p.api("members")
                except Exception:  # not answering yet (starting up)
                    continue
                if p.name not in up:
                    up[p.name] = (time.monotonic() - t0, cpu_seconds(p.pid))
                if p.name not in listed and sum(m["state"] in ("alive", "suspect")
                                                for m in members) >= n:  # fmt: skip
                    listed[p.name] = time.monotonic() - t0
                if sum(m["state"] == "alive" for m in members) >= n:
                    seen[p.name] = time.monotonic() - t0
            time.sleep(0.2)
        converged = max(seen.values()) if len(seen) == n else float("nan")
        agents_cpu = sum(cpu_seconds(p.pid) for p in procs if p.proc.poll() is None)
        streams: collections.Counter[str] = collections.Counter()
        drops: collections.Counter[str] = collections.Counter()
        probing: collections.Counter[str] = collections.Counter()
        stream_failures: collections.Counter[str] = collections.Counter()
        for p in procs:
            try:
                status = p.api("status")
            except Exception:  # an agent that stopped answering shows in its log
                continue
            streams.update(status.get("streams", {}))
            drops.update(status.get("dropped_datagrams", {}))
            probing.update(status.get("membership", {}).get("probing", {}))
            stream_failures.update(status.get("membership", {})
                                   .get("stream_failures_by_reason", {}))  # fmt: skip
        kinds = collections.Counter(m.group(0) for p in procs
                                    for m in FAILURE.finditer(p.log_text()))  # fmt: skip
        warnings = collections.Counter(re.sub(r"[\d.:]+", "N", " ".join(m.groups()))
                                       for p in procs
                                       for m in WARNING.finditer(p.log_text()))  # fmt: skip
        failures = sum(kinds.values())
        floor_s = config_check_floor(mesh)
        return {"converged_s": converged, "agents_converged": len(seen),
                "failed_exchanges": failures, "floor_s": floor_s, "failures_by_kind": dict(kinds),
                "median_agent_s": sorted(seen.values())[len(seen) // 2] if seen else float("nan"),
                "agents_cpu_s": agents_cpu, "streams": dict(sorted(streams.items())),
                "all_up_s": max((u[0] for u in up.values()), default=float("nan")),
                "members_s": max(listed.values()) if len(listed) == n else float("nan"),
                "agents_cpu_at_up_s": sum(u[1] for u in up.values()),
                "dropped_datagrams": dict(sorted(drops.items())),
                "probing": dict(sorted(probing.items())),
                "stream_failures": dict(sorted(stream_failures.items())),
                "warnings": dict(warnings.most_common(8))}  # fmt: skip
    finally:
        mesh.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="20 agents (< 60 s)")
    parser.add_argument("--agents", type=int, default=0, help="how many agents (default 50)")
    parser.add_argument("--keep", action="store_true", help="keep the agents' folders and logs")
    args = parser.parse_args()
    n = args.agents or (20 if args.quick else 50)
    root = Path(tempfile.mkdtemp(prefix="meshmon-startup-"))
    try:
        row = start_all(root, n, timeout=180.0)
    finally:
        if args.keep:
            print(f"agents' folders and logs kept in {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{n} agents:", row, flush=True)
    print(json.dumps({
        "bench": "startup",
        "metric": f"seconds from starting {n} agents at once until all see {n} alive",
        "value": round(row["converged_s"], 2),
        "unit": "s",
        "baseline": f"{n} concurrent 'meshmon config check' runs (process start, imports, "
                    "config and certificates): the floor before an agent can speak",
        "baseline_value": round(row["floor_s"], 2),
        "ratio": round(row["converged_s"] / row["floor_s"], 2),
        "goal": "50 agents <= 15 s, no failed exchange",
        "agents": n,
        "agents_converged": row["agents_converged"],
        "failed_exchanges": row["failed_exchanges"],
        "failures_by_kind": row["failures_by_kind"],
        "median_agent_s": round(row["median_agent_s"], 2),
        "agents_cpu_s": round(row["agents_cpu_s"], 1),
        "agents_cpu_at_up_s": round(row["agents_cpu_at_up_s"], 1),
        "all_up_s": round(row["all_up_s"], 2),
        "members_s": round(row["members_s"], 2),
        "tls_requests": sum(v for k, v in row["streams"].items() if k.startswith("sent:")),
        "streams": row["streams"],
        "dropped_datagrams": row["dropped_datagrams"],
        "probing": row["probing"],
        # membership stream requests that failed, by kind:reason (refused seeds included)
        "stream_failures": row["stream_failures"],
        "warnings": row["warnings"],
    }))


if __name__ == "__main__":
    main()
