"""Ring store benchmark: append throughput of typical results vs SQLite, recovery, memory.

Run: ``python -m benchmarks.store [--quick]``. The last line printed is the JSON result.

What is measured, in the same run, alternating the contenders so load drifts hit both:

* ``e2e``: build a ping-like result dict, CBOR-encode it (cbor2's C extension), and store it,
  1,000 records per ``append_batch`` with the default policy (``fsync = "batch"``, 200 ms,
  synced inline by the store). The baseline does the identical build and encode, then inserts
  into SQLite (WAL, ``synchronous=NORMAL``, one transaction per 100 records via
  ``executemany``, the batching comparable tools use).
* ``ceiling``: the same build and encode with no storage at all: the most any store can reach
  on this machine with this encoding (the physical limit of the e2e loop).
* ``storage only``: both stores fed records already encoded, to show the engines themselves.
* ``single_append_us``: the cost of one unbatched ``append`` (what each probe result costs
  the agent when results trickle in one at a time).
* ``bytes_per_record``: what a stored result costs on disk, for the agent's real payload
  (``[CBOR of the result envelope, degraded]``, random latencies) appended the way the agent
  appends: one ``append_batch`` per 50 ms scheduler tick, so 50 records at 1,000 results/s
  and 5 at 100 results/s; with the CPU each append took (process time, per record). And
  through the agent's own path at 100 results/s: the trio wrapper, whose ``batch`` rounds
  gather 200 ms of ticks into one frame (virtual time, so it takes seconds, not minutes).
  ``bytes_per_record_before_compact_format`` is what the format-1 store took for the same
  payload (measured with it; one frame per record whatever the batch).
* recovery: a writer process fills a 64 MiB ring (it wraps), is SIGKILLed mid-append, and the
  time to reopen it (scan, verify every checksum, truncate the torn tail, rebuild indexes) is
  timed; plus the memory the indexes take per record, by tracemalloc.
* agent-sized stores (``agent_store_50``, ``agent_store_20``): a ring filled with the agent's
  payloads the way the agent fills it, 50 records per frame (1,000 results/s) and 20 (100
  results/s), 500 targets; then the time to reopen it, the memory its indexes hold per record
  (tracemalloc), and the latency of the CLI's common queries: ``latest`` (every series, and
  one target) and the last 10 minutes of one target (``meshmon results --since 10m --target``).
  ``--quick`` fills 32 MiB and also reports recovery scaled linearly to 256 MiB (the default
  ring); the full run fills 256 MiB.

Medians over several runs are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import cbor2

from meshmon.config import StoreConfig
from meshmon.store import RingStore

BATCH = 1000
"""Records per ``append_batch``: what the agent's group commit gathers under load."""
TARGETS = [f"10.{i // 250}.{i % 250}.1" for i in range(500)]
AGENT = "agent-042"

Row = tuple[float, str, str, bytes]


def build_batch(b: int) -> list[Row]:
    """Build and encode one batch of ping results (this is inside every measured loop)."""
    now = 1.7e9 + b * 0.5
    dumps = cbor2.dumps
    out: list[Row] = []
    for i in range(BATCH):
        target = TARGETS[(b * BATCH + i) % len(TARGETS)]
        lat = 0.3 + (i % 17) * 0.01
        result = {
            "kind": "ping",
            "check": "ping-core",
            "target": target,
            "agent": AGENT,
            "ts": now,
            "started": now - 0.003,
            "successes": 3,
            "failures": 0,
            "success_latencies": [lat, lat + 0.02, lat + 0.05],
            "avg_response_time_ms": lat + 0.023,
            "resolved_ip": target,
            "errors": [],
        }
        out.append((now, "ping-core", target, dumps(result)))
    return out


def agent_payload(rng: random.Random, ts: float, target: str) -> bytes:
    """The payload the agent stores for one ping result: ``[encode_result(r), degraded]``,
    built here field for field (names as on the wire) so the benchmark does not move when
    the result model does; latencies are random, as on a real network."""
    lat = [round(rng.uniform(0.2, 30.0), 3) for _ in range(3)]
    result = {
        "v": 1, "kind": "ping", "agent": AGENT, "check": "ping-core", "target": target,
        "family": "ipv4", "started_at": ts, "duration_ms": round(rng.uniform(1.0, 40.0), 3),
        "seq": None,
        "result": {"successes": 3, "failures": 0, "success_latencies": lat, "errors": [],
                   "avg_response_time_ms": sum(lat) / 3, "resolved_ip": target},
    }  # fmt: skip
    return cbor2.dumps([cbor2.dumps(result), False])


def disk_cost(directory: Path, per_call: int, records: int = 60_000) -> dict[str, float]:
    """Append ``records`` agent payloads ``per_call`` at a time (the agent's batch per tick);
    return bytes on disk per record and process CPU microseconds per record."""
    rng = random.Random(per_call)
    ts = 1.7e9
    rows: list[Row] = []
    for i in range(records):
        ts += 0.001 + rng.random() * 1e-4
        target = TARGETS[i % len(TARGETS)]
        rows.append((ts, "ping-core", target, agent_payload(rng, ts, target)))
    store = RingStore(directory, StoreConfig(max_bytes=1024 * 2**20, fsync="never"))
    t0 = time.process_time()
    for i in range(0, records, per_call):
        store.append_batch(rows[i : i + per_call])
    cpu = time.process_time() - t0
    used = store.stats().bytes
    store.close()
    return {"bytes": used / records, "us": cpu / records * 1e6,
            "payload": statistics.mean(len(r[3]) for r in rows)}  # fmt: skip


def agent_path_cost(directory: Path, rate: int, seconds: int) -> dict[str, float]:
    """The agent's own path: ``rate`` results/s arriving as one ``append_batch`` per 50 ms
    tick, each in its own task, through the trio wrapper with the default ``batch`` policy
    (whose rounds gather the ticks of 200 ms into one frame). Virtual time (trio's
    MockClock), so it runs as fast as the CPU allows; the clock jumps while an fsync runs in
    its thread, so ``directory`` had best be on a tmpfs (instant fsyncs, rounds as in real
    time). Returns bytes on disk per record."""
    import trio
    import trio.testing

    from meshmon.store import open_store

    per_tick = rate // 20
    rng = random.Random(rate)

    async def main() -> int:
        async with open_store(directory, StoreConfig(max_bytes=1024 * 2**20)) as store:
            async with trio.open_nursery() as nursery:
                for tick in range(seconds * 20):
                    tss = [1.7e9 + tick * 0.05 + rng.random() * 0.05 for _ in range(per_tick)]
                    rows = [(ts, "ping-core", t, agent_payload(rng, ts, t)) for ts, t in
                            zip(tss, TARGETS[(tick * per_tick) % 500 :], strict=False)]  # fmt: skip
                    nursery.start_soon(store.append_batch, rows)
                    await trio.sleep(0.05)
            return store.stats().bytes

    used = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return {"bytes": used / (seconds * 20 * per_tick)}


def agent_store(directory: Path, per_call: int, rate: int, max_bytes: int) -> dict[str, Any]:
    """Fill a ring of ``max_bytes`` with agent payloads, ``per_call`` records per append at
    ``rate`` results/s (timestamps), until it is full; then reopen it (recovery time), measure
    its index memory and time the CLI's common queries."""
    rng = random.Random(per_call)
    pool = [agent_payload(rng, 1.7e9 + i, TARGETS[i % len(TARGETS)]) for i in range(5000)]
    cfg = StoreConfig(max_bytes=max_bytes, fsync="never")
    ts = 1.7e9
    n = 0
    with RingStore(directory, cfg) as store:
        t_cpu = time.process_time()
        while not store.files.dropped_segments:
            rows = []
            for _ in range(per_call):
                ts += (0.5 + rng.random()) / rate
                rows.append((ts, "ping-core", TARGETS[n % len(TARGETS)], pool[n % len(pool)]))
                n += 1
            store.append_batch(rows)
        cpu = (time.process_time() - t_cpu) / n * 1e6
    opens = []
    for _ in range(3):
        t0 = time.perf_counter()
        store = RingStore(directory, cfg)
        store.latest()
        opens.append(time.perf_counter() - t0)
        st = store.stats()
        store.close()
    tracemalloc.start()
    store = RingStore(directory, cfg)
    store.latest()
    held, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    records = len(store)

    def timed(fn: Any, runs: int = 7) -> tuple[float, int]:
        times, got = [], 0
        for _ in range(runs):
            t0 = time.perf_counter()
            got = len(fn())
            times.append(time.perf_counter() - t0)
        return round(statistics.median(times) * 1e3, 3), got

    target = TARGETS[123]
    q_latest, n_latest = timed(store.latest)
    q_latest_t, _ = timed(lambda: store.latest(target=target))
    q_10m, n_10m = timed(lambda: store.query(target=target, since=ts - 600))
    q_10m_all, _ = timed(lambda: store.query(since=ts - 600, limit=1000))
    store.close()
    return {
        "records": records,
        "bytes": st.bytes,
        "records_per_frame": per_call,
        "append_cpu_us_per_record": round(cpu, 2),
        "recovery_seconds": round(statistics.median(opens), 3),
        "recovery_seconds_per_256mib": round(statistics.median(opens) * 2**28 / st.bytes, 3),
        "index_bytes_per_record": round(held / records, 2),
        "index_bytes_per_record_arrays": round(st.index_bytes / records, 2),
        "latest_all_ms": q_latest,
        "latest_all_records": n_latest,
        "latest_one_target_ms": q_latest_t,
        "query_10min_one_target_ms": q_10m,
        "query_10min_one_target_records": n_10m,
        "query_10min_all_limit_1000_ms": q_10m_all,
    }


def run_ceiling(n_batches: int) -> float:
    """Build and encode only."""
    t0 = time.perf_counter()
    for b in range(n_batches):
        build_batch(b)
    return n_batches * BATCH / (time.perf_counter() - t0)


def run_ring(directory: Path, n_batches: int, batches: list[list[Row]] | None = None) -> float:
    """Append through the ring store with the default config (batch fsync, 200 ms)."""
    store = RingStore(directory, StoreConfig())
    t0 = time.perf_counter()
    for b in range(n_batches):
        store.append_batch(batches[b % len(batches)] if batches else build_batch(b))
    store.sync()
    rate = n_batches * BATCH / (time.perf_counter() - t0)
    store.close()
    return rate


def run_sqlite(path: Path, n_batches: int, batches: list[list[Row]] | None = None) -> float:
    """Insert the same rows into SQLite, WAL, synchronous=NORMAL, a commit every 100 rows."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("CREATE TABLE results (seq INTEGER PRIMARY KEY, ts REAL, chk TEXT, target TEXT, "
                "payload BLOB)")  # fmt: skip
    sql = "INSERT INTO results (ts, chk, target, payload) VALUES (?, ?, ?, ?)"
    t0 = time.perf_counter()
    for b in range(n_batches):
        rows = batches[b % len(batches)] if batches else build_batch(b)
        for i in range(0, len(rows), 100):
            con.execute("BEGIN")
            con.executemany(sql, rows[i : i + 100])
            con.execute("COMMIT")
    rate = n_batches * BATCH / (time.perf_counter() - t0)
    con.close()
    return rate


def single_append_us(directory: Path, batches: list[list[Row]]) -> float:
    """CPU cost of one ``append`` (no batching), microseconds: the agent's per-result path."""
    store = RingStore(directory, StoreConfig(fsync="never"))
    rows = [row for batch in batches[:10] for row in batch]
    t0 = time.perf_counter()
    for row in rows:
        store.append(*row)
    per = (time.perf_counter() - t0) / len(rows) * 1e6
    store.close()
    return per


def fill_until_killed(directory: str, max_bytes: int) -> None:
    """Child process: fill a ring of ``max_bytes``, say "full" once it wrapped, keep going."""
    store = RingStore(directory, StoreConfig(max_bytes=max_bytes))
    batches = [build_batch(b) for b in range(20)]
    said = False
    b = 0
    while True:
        store.append_batch(batches[b % 20])
        b += 1
        if not said and store.files.dropped_segments:
            print("full", flush=True)
            said = True


def measure_recovery(work: Path, max_bytes: int, opens: int) -> dict[str, Any]:
    """Fill a ring in a child, SIGKILL it mid-append, time reopening it."""
    directory = work / "recovery"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.store", "--fill", str(directory), str(max_bytes)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "full":
        raise RuntimeError(f"filler failed: {line!r}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    times = []
    first: RingStore | None = None
    for k in range(opens):  # the first open follows the kill; later ones do the same work
        t0 = time.perf_counter()
        store = RingStore(directory, StoreConfig(max_bytes=max_bytes))
        store.latest()  # includes building the series index
        times.append(time.perf_counter() - t0)
        if k == 0:
            first = store
            stats = store.stats()
        store.close()
    assert first is not None
    tracemalloc.start()
    store = RingStore(directory, StoreConfig(max_bytes=max_bytes))
    store.latest()
    held, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    records = len(store)
    store.close()
    return {
        "recovery_seconds_after_kill": round(times[0], 3),
        "recovery_seconds_median": round(statistics.median(times), 3),
        "recovery_seconds_runs": [round(t, 3) for t in times],
        "recovery_records": stats.records,
        "recovery_bytes": stats.bytes,
        "recovery_truncated_bytes": stats.recovery.truncated_bytes,
        "index_bytes_per_record": round(held / records, 1),
        "index_bytes_per_record_arrays": round(stats.index_bytes / records, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer records and runs (< 60 s)")
    parser.add_argument("--fill", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fill:
        fill_until_killed(args.fill[0], int(args.fill[1]))
        return
    n_batches, runs = (100, 3) if args.quick else (300, 5)
    work = Path(tempfile.mkdtemp(prefix="meshmon-bench-store-"))
    try:
        pre = [build_batch(b) for b in range(20)]
        r: dict[str, list[float]] = {k: [] for k in ("ring", "sqlite", "ceil", "ring_pre",
                                                     "sqlite_pre")}  # fmt: skip
        for k in range(runs):
            r["ring"].append(run_ring(work / f"ring{k}", n_batches))
            r["sqlite"].append(run_sqlite(work / f"sq{k}.db", n_batches))
            r["ceil"].append(run_ceiling(n_batches // 2))
            r["ring_pre"].append(run_ring(work / f"ringp{k}", n_batches, pre))
            r["sqlite_pre"].append(run_sqlite(work / f"sqp{k}.db", n_batches, pre))
            for p in work.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            print(f"run {k + 1}/{runs}: " + ", ".join(f"{n}={v[-1]:,.0f}/s" for n, v in r.items()),
                  file=sys.stderr)  # fmt: skip
        med = {name: statistics.median(v) for name, v in r.items()}
        single = statistics.median(single_append_us(work / f"one{k}", pre) for k in range(3))
        rec = measure_recovery(work, 64 * 2**20, 3)
        cost = {n: disk_cost(work / f"cost{n}", n) for n in (50, 5)}
        size = (32 if args.quick else 256) * 2**20
        agent = {n: agent_store(work / f"agent{n}", n, rate, size)
                 for n, rate in ((50, 1000), (20, 100))}  # fmt: skip
        shm = Path("/dev/shm")
        with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else work) as fast:
            agent100 = agent_path_cost(Path(fast) / "a", 100, 300 if args.quick else 1800)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "bench": "store",
        "metric": "append_throughput_typical_results_encoding_included",
        "value": round(med["ring"]),
        "unit": "records/s",
        "baseline": "sqlite3 WAL synchronous=NORMAL, commit every 100 records (same records)",
        "baseline_value": round(med["sqlite"]),
        "ratio": round(med["ring"] / med["sqlite"], 2),
        "fsync": "batch 200ms",
        "batch_records": BATCH,
        "records_per_run": n_batches * BATCH,
        "runs": runs,
        "encode_ceiling": round(med["ceil"]),
        "fraction_of_ceiling": round(med["ring"] / med["ceil"], 2),
        "storage_only": round(med["ring_pre"]),
        "sqlite_storage_only": round(med["sqlite_pre"]),
        "storage_only_ratio": round(med["ring_pre"] / med["sqlite_pre"], 2),
        "payload_bytes": len(pre[0][0][3]),
        "agent_payload_bytes": round(cost[50]["payload"], 1),
        "bytes_per_record_agent_batch_50": round(cost[50]["bytes"], 1),
        "bytes_per_record_agent_batch_5": round(cost[5]["bytes"], 1),
        "append_cpu_us_per_record_batch_50": round(cost[50]["us"], 2),
        "append_cpu_us_per_record_batch_5": round(cost[5]["us"], 2),
        "bytes_per_record_agent_path_100_per_s": round(agent100["bytes"], 1),
        "bytes_per_record_before_compact_format": 313.6,
        "records_per_mib_agent_batch_50": round(2**20 / cost[50]["bytes"]),
        "hours_in_512mib_at_100_per_s": round(512 * 2**20 / agent100["bytes"] / 100 / 3600, 1),
        "single_append_us": round(single, 2),
        **rec,
        "agent_store_50": agent[50],
        "agent_store_20": agent[20],
        "goal": ">= 4x sqlite and >= 250000 records/s",
        "quick": args.quick,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
