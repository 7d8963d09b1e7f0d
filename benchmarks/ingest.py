"""End-to-end ingest: agents' ring stores → sync over mTLS → committed in PostgreSQL.

What runs is what users run: a real ``meshmon aggregator run`` process (HTTPS with the mesh's
mutual TLS, the exactly-once COPY writer) on a PostgreSQL the benchmark starts from the
machine's binaries, and the agents' own :class:`meshmon.sync.Uploader` over real ring stores,
one per simulated agent, each with its own certificate. The uploaders run in worker processes
(agents are separate machines in real life; here they share the two cores with the aggregator
and PostgreSQL, which only makes the end-to-end figure pessimistic), with the garbage-collector
settings an agent process runs with once started (:func:`meshmon.runner.tune_gc`).

The backlog is what an hour offline leaves: each of the agents has ``rate`` results/s for
``minutes`` minutes waiting in its store (100 agents x 10/s x 60 min = 3.6 M rows by default;
``--quick``: 5 minutes). The clock runs from the moment the uploaders start (the worker
processes have imported, opened their agents' stores and built the uploaders) until every
stream's high-water mark in the database equals its store's last seq.

How the stores were written matters: an agent appends each fsync round's results (0.2 s) as
one frame, and an upload reads, or ships, frames. Two runs, each with its own stores,
PostgreSQL and aggregator:

* the headline, rows/s end to end, over stores of busy agents: ``--frame`` results a frame
  (200: an agent storing 1000 results/s);
* the catch-up, over stores written as agents at ``rate`` write them (10/s: 2 results a
  frame), timed for what it is: 100 agents' hour offline, the goal's very backlog.

Baselines, the same rows into the same table: ``psql``'s binary ``\\copy`` (the ceiling: the rows
are exported from the table after the headline run, the table emptied, and loaded back) and
psycopg's ``executemany`` INSERT (on a sample). Goals: end to end >= 0.5 x ``\\copy``; catch-up
after an hour offline for 100 agents at 10 results/s <= 60 s.

    python -m benchmarks.ingest [--quick] [--agents 100] [--minutes 60] [--rate 10] [--workers 2]
                                [--frame 200] [--no-catchup]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHECKS = ("ping-lan", "ping-wan")


def log(msg: str) -> None:
    print(f"[ingest] {msg}", file=sys.stderr, flush=True)


# --- the simulated agents' stores ---------------------------------------------------------------


def results(count: int = 64) -> Any:
    """A maker of stored payloads as the agent writes them, ``[encode_result(...), degraded]``,
    for ping results of ``count`` kinds (one in 16 lost a packet), byte for byte what
    ``encode_result`` writes for this agent, check, target and time (checked once)."""
    import dataclasses
    import random
    import struct

    import cbor2

    from meshmon.results import Ping, PingResult, decode_result, encode_result
    from meshmon.results.encoded import encoded as as_stored
    from meshmon.results.encoded import stored_value

    rng = random.Random(7)
    tails = []
    unnamed = bytes((0x8A, 0x02, 0x64)) + b"ping" + b"\x60\x60\x60"  # [2, "ping", "", "", ""
    samples = []
    for i in range(count):
        rtts = tuple(round(rng.uniform(0.2, 40.0), 3) for _ in range(3))
        lost = 1 if i % 16 == 0 else 0
        result = PingResult(successes=3 - lost, failures=lost, success_latencies=rtts[lost:],
                            errors=(), avg_response_time_ms=sum(rtts[lost:]) / (3 - lost),
                            resolved_ip="10.0.0.1")  # fmt: skip
        record = Ping(agent="", check="", target="", family=4, started_at=0.0, duration_ms=1.0,
                      result=result)  # fmt: skip
        encoded = encode_result(record)
        assert encoded.startswith(unnamed)
        tails.append((encoded[len(unnamed) :],  # family, started_at, duration, seq, payload
                      as_stored(record).stored(False)[1]))  # its summary  # fmt: skip
        samples.append(record)
    heads: dict[tuple[str, str, str], bytes] = {}
    start = struct.Struct(">Bd").pack

    def stored(agent: str, check: str, target: str, ts: float, i: int
               ) -> tuple[bytes, tuple[int, float] | None]:  # fmt: skip
        head = heads.get((agent, check, target))
        if head is None:
            head = heads[agent, check, target] = unnamed[:7] + b"".join(
                map(cbor2.dumps, (agent, check, target)))  # fmt: skip
        tail, summary = tails[i % count]
        return stored_value(b"".join((head, tail[:1], start(0xFB, ts), tail[10:])),
                            False), summary  # fmt: skip

    sample = dataclasses.replace(samples[5], agent="a", check="c", target="t", started_at=1.5e9)
    assert stored("a", "c", "t", 1.5e9, 5) == as_stored(sample).stored(False)
    data, _ = cbor2.loads(stored("a", "c", "t", 1.5e9, 5)[0])
    assert decode_result(data) == sample
    return stored


def fill(root: Path, agents: int, per_agent: int, span: float, frame: int) -> None:
    """Each agent's store holds ``per_agent`` results spread over the last ``span`` seconds,
    appended ``frame`` at a time (each append is a frame, as each fsync round of the agent's
    store is), and the upload cursor that it had before it went offline."""
    from meshmon.config import StoreConfig
    from meshmon.store import RingStore
    from meshmon.sync import CURSOR

    stored = results()
    now = time.time()
    cfg = StoreConfig(max_bytes=512 * 2**20, fsync="never")
    for a in range(agents):
        agent = f"agent-{a:03d}"
        with RingStore(root / agent / "store", cfg) as store:
            store.cursor(CURSOR)
            step = span / per_agent
            chunk = []
            for i in range(per_agent):
                ts = now - span + i * step
                target = f"10.{a % 250}.{(i // 7) % 250}.{i % 7 + 1}"
                chunk.append((ts, CHECKS[i % 2], target, *stored(agent, CHECKS[i % 2], target,
                                                                 ts, i)))  # fmt: skip
                if len(chunk) == frame:
                    store.append_batch(chunk)
                    chunk = []
            if chunk:
                store.append_batch(chunk)
            store.sync()
        if a % 20 == 19:
            log(f"filled {a + 1}/{agents} stores")


def certificates(root: Path, agents: int) -> None:
    from meshmon import pki

    pki.init_ca(root / "ca")
    pki.issue_cert(root / "ca", "aggregator-1", root / "aggregator" / "certs", tags=["aggregator"],
                   ips=["127.0.0.1"])  # fmt: skip
    for a in range(agents):
        pki.issue_cert(root / "ca", f"agent-{a:03d}", root / f"agent-{a:03d}" / "certs")


# --- a worker process: some agents' uploaders ---------------------------------------------------


def worker(root: Path, first: int, count: int, url: str) -> None:
    """Run the uploaders of agents ``first .. first+count-1`` until cancelled."""
    import logging

    import trio

    from meshmon import pki
    from meshmon.config import StoreConfig, SyncConfig
    from meshmon.runner import tune_gc
    from meshmon.store import open_store
    from meshmon.sync import Uploader

    logging.basicConfig(level=logging.WARNING)
    ca = root / "ca"
    sync = SyncConfig(urls=(url,), batch_size=5000, max_delay=0.05)  # type: ignore[call-arg]

    go = trio.Event()

    async def one(a: int, task_status: trio.TaskStatus[None]) -> None:
        folder = root / f"agent-{a:03d}"
        identity, trust = pki.load_identity(ca / "ca.crt", folder / "certs" / "node.crt",
                                            folder / "certs" / "node.key", ca / "crl.pem")
        async with open_store(folder / "store", StoreConfig(max_bytes=512 * 2**20)) as store:
            up = Uploader(store, identity, trust, sync, urls=lambda: (url,))
            task_status.started()
            await go.wait()
            await up.run()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for a in range(first, first + count):
                await nursery.start(one, a)
            tune_gc()  # what an agent process does once started (meshmon.runner)
            print("ready", flush=True)  # the parent starts the clock, then says go
            await trio.to_thread.run_sync(sys.stdin.readline)
            go.set()

    trio.run(main)


# --- PostgreSQL and the aggregator ----------------------------------------------------------------


def start_postgres(root: Path) -> Any:
    from aggregator.postgres import EmbeddedPostgres

    pg = EmbeddedPostgres(root / "pg")
    log("starting PostgreSQL")
    pg.start()
    return pg


def start_aggregator(root: Path, db_url: str) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = root / "aggregator"
    shutil.copy(root / "ca" / "ca.crt", folder / "certs" / "ca.crt")
    shutil.copy(root / "ca" / "crl.pem", folder / "certs" / "crl.pem")
    (folder / "aggregator.toml").write_text(f"""\
[aggregator]
address = "127.0.0.1"
port = {port}
data_dir = "data"
database_url = "{db_url}"
[aggregator.tls]
ca_cert = "certs/ca.crt"
cert = "certs/node.crt"
key = "certs/node.key"
crl = "certs/crl.pem"
[aggregator.log]
level = "warning"
""")
    logf = (folder / "aggregator.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "meshmon", "aggregator", "run", "-c",
                             str(folder / "aggregator.toml")], stdout=logf,
                            stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the aggregator exited: {(folder / 'aggregator.log').read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"https://127.0.0.1:{port}"
        time.sleep(0.2)
    raise SystemExit("the aggregator did not listen within 60 s")


def committed(conn: Any) -> int:
    row = conn.execute("SELECT coalesce(sum(high_water), 0) FROM streams").fetchone()
    return int(row[0])


# --- baselines ----------------------------------------------------------------------------------


def psql_copy(pg: Any, root: Path, rows: int) -> float:
    """rows/s of psql's binary \\copy of the table's own rows back into it."""
    psql = str(Path(pg.binaries.bindir) / "psql") if hasattr(pg.binaries, "bindir") else "psql"
    if not Path(psql).exists():
        psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    dump = root / "results.bin"
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    cols = ("time, agent, store, seq, check_name, target, kind, success, rtt_ms, loss, error, "
            "payload")  # fmt: skip
    subprocess.run([psql, pg.url, "-qc", f"\\copy (SELECT {cols} FROM results) TO '{dump}' "
                    "WITH (FORMAT binary)"], check=True, env=env)  # fmt: skip
    subprocess.run([psql, pg.url, "-qc", "TRUNCATE results"], check=True, env=env)
    t0 = time.perf_counter()
    subprocess.run([psql, pg.url, "-qc", f"\\copy results ({cols}) FROM '{dump}' "
                    "WITH (FORMAT binary)"], check=True, env=env)  # fmt: skip
    return rows / (time.perf_counter() - t0)


def executemany(conn: Any, sample: int) -> float:
    """rows/s of executemany INSERT of ``sample`` of the table's rows (into the same table)."""
    rows = conn.execute("SELECT time, agent, store, seq, check_name, target, kind, success, "
                        "rtt_ms, loss, error, payload FROM results LIMIT %s", (sample,)).fetchall()
    conn.execute("DELETE FROM results WHERE (agent, seq) IN (SELECT agent, seq FROM results "
                 "LIMIT %s)", (sample,))  # fmt: skip
    conn.commit()
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO results (time, agent, store, seq, check_name, target, kind, "
                        "success, rtt_ms, loss, error, payload) VALUES (%s, %s, %s, %s, %s, %s, "
                        "%s, %s, %s, %s, %s, %s)", rows)  # fmt: skip
    conn.commit()
    return len(rows) / (time.perf_counter() - t0)


# --- the run ------------------------------------------------------------------------------------


ROUND = 0.2
"""Seconds of an agent's fsync round (``store.fsync_interval``): each round's results are
appended, and stored, as one frame."""


def run(args: argparse.Namespace, frame: int, baselines: bool) -> dict[str, Any]:
    """One end-to-end run over stores written in frames of ``frame`` results; with
    ``baselines``, then psql's ``\\copy`` and ``executemany`` of the same rows."""
    import psycopg

    root = Path(tempfile.mkdtemp(prefix="meshmon-ingest-"))
    os.chmod(root, 0o755)  # the embedded PostgreSQL runs as its own user
    per_agent = int(args.rate * args.minutes * 60)
    total = per_agent * args.agents
    pg = aggregator = None
    workers: list[subprocess.Popen[bytes]] = []
    try:
        log(f"{args.agents} agents x {per_agent} results ({args.minutes} min at {args.rate}/s) "
            f"= {total} rows, stored {frame} to a frame")
        certificates(root, args.agents)
        fill(root, args.agents, per_agent, args.minutes * 60, frame)
        pg = start_postgres(root)
        aggregator, url = start_aggregator(root, pg.url)
        conn = psycopg.connect(pg.url, autocommit=True)
        while not conn.execute("SELECT to_regclass('streams')").fetchone()[0]:
            time.sleep(0.2)  # the aggregator applies the migrations
        share = -(-args.agents // args.workers)
        for w in range(args.workers):
            first, count = w * share, min(share, args.agents - w * share)
            if count > 0:
                workers.append(subprocess.Popen([sys.executable, "-m", "benchmarks.ingest",
                                                 "--worker", str(root), str(first), str(count),
                                                 url], stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE))  # fmt: skip
        for p in workers:  # each has opened its agents' stores and built their uploaders
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        log(f"{len(workers)} uploader processes ready: go")
        t0 = time.perf_counter()
        for p in workers:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        last_log, done = t0, 0
        deadline = t0 + args.timeout
        while done < total:
            if time.perf_counter() > deadline:
                raise SystemExit(f"only {done}/{total} rows committed after {args.timeout} s")
            time.sleep(0.2)
            done = committed(conn)
            if time.perf_counter() - last_log > 5:
                last_log = time.perf_counter()
                log(f"{done}/{total} rows committed ({done / (last_log - t0):,.0f} rows/s)")
        elapsed = time.perf_counter() - t0
        rows = conn.execute("SELECT count(*) FROM results").fetchone()[0]
        assert rows == total, f"{rows} rows in the table for {total} records"
        e2e = total / elapsed
        log(f"end to end: {total} rows in {elapsed:.1f} s = {e2e:,.0f} rows/s")
        for p in workers:
            p.terminate()
        aggregator.terminate()
        aggregator.wait(timeout=30)
        aggregator = None
        out: dict[str, Any] = {"rows": total, "elapsed_s": round(elapsed, 1),
                               "rows_per_s": round(e2e), "frame_records": frame}  # fmt: skip
        if baselines:
            out["copy_rows_per_s"] = round(psql_copy(pg, root, total))
            log(f"psql binary \\copy: {out['copy_rows_per_s']:,} rows/s")
            conn2 = psycopg.connect(pg.url)
            out["executemany_rows_per_s"] = round(executemany(conn2, min(total, 50_000)))
            conn2.close()
            log(f"executemany INSERT: {out['executemany_rows_per_s']:,} rows/s")
        return out
    finally:
        for p in workers:
            if p.poll() is None:
                p.kill()
        if aggregator is not None:
            aggregator.kill()
        if pg is not None:
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The headline run (stores of busy agents) and the catch-up run (stores of agents at
    ``rate``), as one JSON object."""
    head = run(args, args.frame, baselines=True)
    e2e, copy = head["rows_per_s"], head["copy_rows_per_s"]
    result: dict[str, Any] = {
        "bench": "ingest", "metric": "end_to_end_rows_per_s", "value": e2e, "unit": "rows/s",
        "baseline": "psql binary \\copy (same rows, same table)", "baseline_value": copy,
        "ratio": round(e2e / copy, 3), "executemany_rows_per_s": head["executemany_rows_per_s"],
        "ratio_vs_executemany": round(e2e / head["executemany_rows_per_s"], 2),
        "rows": head["rows"], "elapsed_s": head["elapsed_s"], "frame_records": args.frame,
        "agents": args.agents, "backlog_minutes": args.minutes, "rate": args.rate,
        "workers": args.workers,
    }  # fmt: skip
    if not args.no_catchup:
        frame = max(1, round(args.rate * ROUND))
        catch = run(args, frame, baselines=False)
        result.update({
            "catchup_s": catch["elapsed_s"], "catchup_rows_per_s": catch["rows_per_s"],
            "catchup_frame_records": frame,
            "catchup_goal": "100 agents x 1 h at 10 results/s within 60 s",
            "catchup_measured": (args.agents, args.minutes, args.rate) == (100, 60, 10),
        })  # fmt: skip
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 minutes of backlog (~40 s)")
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=10.0, help="results/s per agent")
    ap.add_argument("--workers", type=int, default=2, help="uploader processes")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--frame", type=int, default=200,
                    help="results a frame in the headline run (an agent at 1000 results/s "
                    "stores 200 a fsync round)")  # fmt: skip
    ap.add_argument("--no-catchup", action="store_true",
                    help="skip the catch-up run (stores as agents at --rate write them)")
    args = ap.parse_args()
    if args.quick:
        args.minutes = 5.0
    print(json.dumps(measure(args)))


if __name__ == "__main__":
    main()
