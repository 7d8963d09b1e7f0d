"""Crash safety: a real writer process is SIGKILLed during heavy appends; every record it
acknowledged (printed after ``append`` returned) must be there after restart."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from meshmon.config import StoreConfig
from meshmon.store import RingStore
from meshmon.store.format import encode_file_header
from meshmon.store.segment import segment_name

ROOT = Path(__file__).resolve().parent.parent

# Writer: tasks append through the trio wrapper (or threads-free sync core) and print
# "seq task i" for every acknowledged record, flushing each line before appending more.
WRITER = r"""
import sys, time
import trio
from meshmon.config import StoreConfig
from meshmon.store import RingStore, open_store

directory, mode, policy = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = StoreConfig(max_bytes=64 * 2**20, segment_bytes=256 * 1024, fsync=policy,
                  fsync_interval=0.01)
out = sys.stdout

def payload(k, i):
    return {"k": k, "i": i, "pad": "x" * (i % 97), "lat": [1.5, 2.5, float(i)]}

if mode == "big":  # huge single writes, so that the kill often lands inside write()
    import cbor2, os  # random pads: the store compresses, and these writes must stay large
    cfg = StoreConfig(max_bytes=512 * 2**20, segment_bytes=128 * 2**20, fsync=policy)
    from meshmon.store import files
    plain_write = files.SegmentFiles._write

    def announced_write(self, data):  # compressing takes 10x longer than the write itself:
        out.write("writing\n"); out.flush()  # say when it starts, for the kill to aim at it
        plain_write(self, data)

    files.SegmentFiles._write = announced_write
    store = RingStore(directory, cfg)
    pre = [(1.0, "big", "t", cbor2.dumps({"k": 0, "i": j, "pad": os.urandom(4000)}))
           for j in range(4000)]
    out.write("ready\n"); out.flush()
    while True:
        seqs = store.append_batch(pre)
        out.write("".join(f"{s} 0 {j}\n" for j, s in enumerate(seqs))); out.flush()
elif mode == "sync":
    store = RingStore(directory, cfg)
    out.write("ready\n"); out.flush()
    i = 0
    while True:
        batch = [(time.time(), "ping", f"t{j % 7}", payload(0, i + j)) for j in range(200)]
        seqs = store.append_batch(batch)
        if policy == "batch":
            store.wait_durable(seqs[-1])  # the flusher thread fsyncs within fsync_interval
        out.write("".join(f"{s} 0 {i + j}\n" for j, s in enumerate(seqs))); out.flush()
        i += 200
else:
    async def worker(store, k):
        i = 0
        while True:
            if k % 2:
                seqs = await store.append_batch(
                    [(time.time(), f"c{k}", f"t{j}", payload(k, i + j)) for j in range(50)])
                out.write("".join(f"{s} {k} {i + j}\n" for j, s in enumerate(seqs)))
                i += 50
            else:
                s = await store.append(time.time(), f"c{k}", "t", payload(k, i))
                out.write(f"{s} {k} {i}\n")
                i += 1
            out.flush()

    async def main():
        async with open_store(directory, cfg) as store:
            out.write("ready\n"); out.flush()
            async with trio.open_nursery() as nursery:
                for k in range(8):
                    nursery.start_soon(worker, store, k)

    trio.run(main)
"""


async def run_and_kill(
    directory: Path, mode: str, policy: str, acks: int, kill_delay: float = 0.0
) -> list[list[int]]:
    """Start the writer, SIGKILL it ``kill_delay`` seconds after ``acks`` records are
    acknowledged, and return every acknowledged (seq, task, i) line it printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", WRITER, str(directory), mode, policy],
        stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    buf = bytearray()
    seen = 0
    with trio.fail_after(30):
        while seen < acks:
            chunk = await proc.stdout.receive_some()
            assert chunk, "writer died before it was killed"
            buf += chunk
            seen = buf.count(b"\n") - 1 - buf.count(b"writing")  # minus "ready" and "writing"
        if kill_delay:
            while not buf.endswith(b"writing\n"):  # a write is starting (big mode)
                chunk = await proc.stdout.receive_some()
                assert chunk, "writer died before it was killed"
                buf += chunk
            await trio.sleep(kill_delay)  # not waiting for anything: picking the kill moment
        proc.send_signal(signal.SIGKILL)
        while chunk := await proc.stdout.receive_some():  # lines written before the kill
            buf += chunk
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    lines = buf.decode().split("\n")
    assert lines[0] == "ready"
    complete = [x for x in lines[1:-1] if x != "writing"]  # the last may be cut by the kill
    return [[int(x) for x in line.split()] for line in complete]


@pytest.mark.parametrize(
    ("mode", "policy", "acks"),
    [("aio", "always", 600), ("aio", "batch", 3000), ("sync", "always", 6000),
     ("sync", "batch", 6000)],
)  # fmt: skip
async def test_every_acknowledged_record_survives_sigkill(
    tmp_path: Path, mode: str, policy: str, acks: int
) -> None:
    acked = await run_and_kill(tmp_path, mode, policy, acks)
    assert len(acked) >= acks
    with RingStore(tmp_path, StoreConfig(max_bytes=64 * 2**20, segment_bytes=256 * 1024)) as st:
        seqs = [a[0] for a in acked]
        assert len(set(seqs)) == len(seqs), "a seq was acknowledged twice"
        for seq, k, i in acked:
            rec = st.get(seq)
            assert rec is not None, f"acknowledged seq {seq} lost"
            value = rec.value()
            assert (value["k"], value["i"]) == (k, i)
        # the store's seqs are gap-free up to the newest record, and appends continue above it
        newest = st.stats().newest_seq
        assert newest is not None and newest >= max(seqs)
        assert [r.seq for r in st.read(1, limit=10**6, max_bytes=2**40)] == list(
            range(1, newest + 1)
        )
        assert st.append(1.0, "after", "crash", 1) == newest + 1


async def test_sigkill_inside_a_large_write_tears_a_record_and_recovery_cuts_it(
    tmp_path: Path,
) -> None:
    """With 16 MB writes the kill often lands inside ``write()``, leaving a real torn frame.
    Retry (in fresh directories) until that happened, checking every acknowledged record each
    time; a torn tail is seen in most attempts, so 12 attempts all missing it would mean the
    test no longer exercises what it is for."""
    cfg = StoreConfig(max_bytes=512 * 2**20, segment_bytes=128 * 2**20)
    rng = random.Random(7)
    for attempt in range(12):
        directory = tmp_path / f"try{attempt}"
        acked = await run_and_kill(directory, "big", "never", 8000, rng.uniform(0.001, 0.04))
        with RingStore(directory, cfg) as st:
            for seq, _k, i in acked:
                rec = st.get(seq)
                assert rec is not None and rec.value()["i"] == i
            torn = st.stats().recovery.truncated_bytes
            newest = st.stats().newest_seq
            assert newest is not None and st.append(1.0, "c", "t", 1) == newest + 1
        shutil.rmtree(directory)
        if torn:
            return
    pytest.fail("no attempt tore a write; the writer no longer writes large enough batches")


def test_crash_right_after_a_roll_leaves_an_empty_segment(tmp_path: Path) -> None:
    cfg = StoreConfig(max_bytes=64 * 1024, segment_bytes=16 * 1024)
    with RingStore(tmp_path, cfg) as store:
        store.append_batch([(1.0, "c", "t", b"\x01")] * 10)
    (tmp_path / segment_name(11)).write_bytes(encode_file_header(11))
    with RingStore(tmp_path, cfg) as store:
        assert store.append(2.0, "c", "t", 2) == 11
        assert store.stats().recovery.problems == []
    with RingStore(tmp_path, cfg) as store:
        assert len(store) == 11 and store.get(11) is not None
