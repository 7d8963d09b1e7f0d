"""The trio wrapper: durability on return per policy, group commit, failure propagation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from meshmon.config import StoreConfig
from meshmon.store import InvalidRecord, RingStore, StoreFailed, open_store


def cfg(policy: str, interval: float = 0.05) -> StoreConfig:
    return StoreConfig(max_bytes=1 << 20, segment_bytes=64 * 1024, fsync=policy,  # type: ignore[arg-type]
                       fsync_interval=interval)  # fmt: skip


@pytest.mark.parametrize("policy", ["always", "batch"])
async def test_append_returns_once_durable_and_concurrent_appends_share_fsyncs(
    tmp_path: Path, policy: str
) -> None:
    async with open_store(tmp_path, cfg(policy)) as store:
        durable_at_return: list[bool] = []

        async def one(k: int) -> None:
            seq = await store.append(1000.0 + k, "ping", f"t{k % 5}", {"k": k})
            durable_at_return.append(store.core.durable_seq >= seq)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for k in range(40):
                    nursery.start_soon(one, k)
        assert durable_at_return == [True] * 40
        assert 1 <= store.fsync_rounds < 40  # grouped, not one fsync per append
        if policy == "batch":
            assert store.fsync_rounds <= 2
        seqs = await store.append_batch([(2000.0, "ping", "t", {"b": i}) for i in range(10)])
        assert store.core.durable_seq >= seqs[-1]
        t1 = store.query(check="ping", target="t1", limit=100)
        assert sorted(r.value()["k"] for r in t1) == list(range(1, 40, 5))


async def test_never_policy_does_not_wait_for_fsync(tmp_path: Path) -> None:
    async with open_store(tmp_path, cfg("never")) as store:
        seq = await store.append(1.0, "c", "t", 1)
        assert seq == 1 and store.fsync_rounds == 0
        assert [r.seq for r in store.read_cursor(store.core.cursor("x").name)] == [1]


async def test_cursor_commit_through_the_wrapper_and_clean_close(tmp_path: Path) -> None:
    async with open_store(tmp_path, cfg("batch", 0.01)) as store:
        store.core.cursor("sync")
        with trio.fail_after(10):
            seqs = await store.append_batch([(1.0 + i, "c", "t", i) for i in range(20)])
        batch = store.read_cursor("sync", limit=15)
        info = await store.commit_cursor("sync", batch[-1].seq)
        assert info.position == 16 and info.behind == 5
        last = store.core.append(5.0, "c", "t", "unsynced at exit")
    assert last == seqs[-1] + 1
    with RingStore(tmp_path, cfg("batch")) as core:  # closing synced it; the cursor persisted
        assert core.durable_seq == last and core.cursor("sync").position == 16


async def test_fsync_failure_fails_waiters_and_later_appends(tmp_path: Path) -> None:
    async with open_store(tmp_path, cfg("always")) as store:
        await store.append(1.0, "c", "t", 1)
        wfd = store.core.files.wfd
        assert wfd is not None
        r, w = os.pipe()
        os.dup2(w, wfd)  # writes still succeed, but fdatasync now fails (EINVAL on a pipe)
        os.close(w)
        with trio.fail_after(10), pytest.raises(StoreFailed, match="fsync"):
            await store.append(2.0, "c", "t", 2)
        with pytest.raises(StoreFailed, match="restart"):
            await store.append(3.0, "c", "t", 3)
        os.close(r)


async def test_cancelled_leader_hands_the_round_over(tmp_path: Path) -> None:
    async with open_store(tmp_path, cfg("batch", 0.2)) as store:
        done: list[int] = []

        async def cancelled_leader() -> None:
            with trio.move_on_after(0.01):
                await store.append(1.0, "c", "t", "leader")
            done.append(-1)

        async def follower() -> None:
            await trio.lowlevel.checkpoint()  # append after the leader took the round
            done.append(await store.append(2.0, "c", "t", "follower"))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancelled_leader)
                nursery.start_soon(follower)
        assert sorted(done) == [-1, 2] and store.core.durable_seq == 2


def batch_frames_written(directory: Path) -> list[int]:
    """Record count of every batch frame in the store's segments, in file order."""
    from meshmon.store import batch
    from meshmon.store.format import FILE_HEADER_SIZE

    counts = []
    for seg in sorted(directory.glob("*.seg")):
        data, pos = seg.read_bytes(), FILE_HEADER_SIZE
        while (head := batch.read_head(data, pos, len(data))) is not None:
            if head.kind == batch.KIND_BATCH:
                counts.append(head.count)
            pos = head.end
    return counts


async def test_a_rounds_appends_are_written_as_one_frame(tmp_path: Path) -> None:
    """Under ``batch``, the appends of one fsync round are gathered into one compressed frame
    (the agent appends a few results per tick; alone they would compress poorly)."""
    async with open_store(tmp_path, cfg("batch", 0.05)) as store:
        got: dict[int, range] = {}

        async def tick(k: int) -> None:
            got[k] = await store.append_batch([(float(k), "ping", f"t{i}", {"k": k, "i": i})
                                               for i in range(5)])  # fmt: skip

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for k in range(10):
                    nursery.start_soon(tick, k)
        assert store.fsync_rounds == 1
        assert sorted(s for r in got.values() for s in r) == list(range(1, 51))
        for k, seqs in got.items():
            assert [r.value() for r in store.core.read(seqs[0], limit=5)] == [
                {"k": k, "i": i} for i in range(5)]  # fmt: skip
    assert batch_frames_written(tmp_path) == [50]


async def test_a_bad_record_fails_only_the_append_that_brought_it(tmp_path: Path) -> None:
    async with open_store(tmp_path, cfg("batch", 0.05)) as store:
        results: dict[str, object] = {}

        async def good(name: str) -> None:
            results[name] = await store.append_batch([(1.0, "c", name, 1), (2.0, "c", name, 2)])

        async def bad() -> None:
            try:
                await store.append_batch([(1.0, "c", "t", 1), (float("nan"), "c", "t", 2)])
            except InvalidRecord as exc:
                results["bad"] = exc

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(good, "a")
                nursery.start_soon(bad)
                nursery.start_soon(good, "b")
        assert isinstance(results["bad"], InvalidRecord)
        # trio starts tasks in no promised order: each good call got two consecutive seqs
        got = sorted([list(results["a"]), list(results["b"])])  # type: ignore[call-overload]
        assert got == [[1, 2], [3, 4]]
        assert store.core.durable_seq == 4 and len(store.core) == 4


async def test_records_of_a_cancelled_append_are_still_written(tmp_path: Path) -> None:
    """As before gathering, an append cancelled while it waits for durability has handed its
    records over: they are written (at the latest when the store closes), never half."""
    async with open_store(tmp_path, cfg("batch", 0.5)) as store:
        with trio.move_on_after(0.01):
            await store.append_batch([(1.0, "c", "t", i) for i in range(3)])
    with RingStore(tmp_path, cfg("batch")) as core:
        assert [r.value() for r in core.read(1)] == [0, 1, 2]
