"""Scheduler: pure planning maths (table tests) and the trio driver under MockClock."""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from meshmon.config import CheckConfig
from meshmon.placement import AgentInfo, Assignment
from meshmon.scheduler import (
    Scheduler,
    SchedulerConfig,
    first_due,
    jitter,
    jitter_seed,
    jitter_share,
    next_due,
    phase_offset,
)


@pytest.mark.parametrize(
    ("now", "interval", "offset", "expected"),
    [(0.0, 10.0, 3.0, 3.0), (3.0, 10.0, 3.0, 3.0), (3.5, 10.0, 3.0, 13.0),
     (25.0, 10.0, 0.0, 30.0), (100.0, 30.0, 29.0, 119.0)],
)
def test_first_due(now: float, interval: float, offset: float, expected: float) -> None:
    assert first_due(now, interval, offset) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prev", "interval", "now", "expected"),
    [(10.0, 10.0, 10.5, 20.0), (10.0, 10.0, 35.0, 40.0), (10.0, 10.0, 40.0, 40.0)],
)
def test_next_due_skips_missed_slots(prev: float, interval: float, now: float,
                                     expected: float) -> None:
    assert next_due(prev, interval, now) == pytest.approx(expected)


def test_offsets_spread_across_interval() -> None:
    offsets = [phase_offset("c", f"t{i}", 30.0) for i in range(1000)]
    assert all(0 <= o < 30.0 for o in offsets)
    buckets = [0] * 10
    for o in offsets:
        buckets[int(o // 3.0)] += 1
    assert min(buckets) > 60 and max(buckets) < 140  # ~100 each, no herd
    js = [jitter("c", "t", r, 30.0, 0.05) for r in range(200)]
    assert all(0 <= j < 1.5 for j in js) and len(set(js)) > 150
    assert js == [jitter("c", "t", r, 30.0, 0.05) for r in range(200)]  # deterministic


def test_jitter_shares_are_uniform_over_rounds_and_assignments() -> None:
    seeds = [jitter_seed("c", f"t{i}") for i in range(100)]
    shares = [jitter_share(s, r) for s in seeds for r in range(100)]
    assert all(0.0 <= x < 1.0 for x in shares)
    buckets = [0] * 10
    for x in shares:
        buckets[int(x * 10)] += 1
    assert min(buckets) > 850 and max(buckets) < 1150  # ~1000 each
    for s in seeds[:10]:  # one assignment's rounds do not repeat a pattern
        gaps = {round(jitter_share(s, r + 1) - jitter_share(s, r), 6) for r in range(50)}
        assert len(gaps) == 50
    assert jitter_share(0, 0) == jitter_share(0, 0) != jitter_share(0, 1)
    assert jitter_share(2**64 - 1, 2**40) < 1.0


def pairs(n: int, interval: float = 10.0) -> list[tuple[CheckConfig, Assignment]]:
    check = CheckConfig(name="c", kind="ping", targets=tuple(f"t{i}" for i in range(n)),
                        interval=interval, timeout=1.0)  # type: ignore[arg-type]
    return [(check, Assignment("c", f"t{i}", f"t{i}")) for i in range(n)]


class Recorder:
    def __init__(self, duration: float = 0.0, block: float = 0.0) -> None:
        self.calls: list[tuple[str, float]] = []
        self.results: list[tuple[str, bool]] = []
        self.duration = duration
        self.block = block
        self.running = 0
        self.peak = 0
        self.two_results = trio.Event()

    async def run(self, assignment: Assignment, check: CheckConfig) -> Any:
        self.calls.append((assignment.target, trio.current_time()))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.block:
                time.sleep(self.block)  # noqa: ASYNC251 -- deliberately starve the loop
            await trio.sleep(self.duration)
        finally:
            self.running -= 1
        return {"ok": True}

    async def sink(self, items: Any) -> None:
        for assignment, _, degraded in items:
            self.results.append((assignment.target, degraded))
        if len(self.results) >= 2:
            self.two_results.set()


async def test_runs_on_interval_spread_and_capped(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder(duration=0.1)
    sched = Scheduler("me", rec.run, rec.sink, SchedulerConfig(max_concurrent=4))
    sched.set_assignments(pairs(200))
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.run)
            await trio.sleep(35.0)
            nursery.cancel_scope.cancel()
    per_target: dict[str, list[float]] = {}
    for t, at in rec.calls:
        per_target.setdefault(t, []).append(at)
    assert len(per_target) == 200
    gaps = [b - a for ts in per_target.values() for a, b in itertools.pairwise(ts)]
    # interval +- bounded jitter (and queuing behind the cap)
    assert gaps and all(8.5 <= g <= 11.5 for g in gaps)
    firsts = sorted(ts[0] for ts in per_target.values())
    assert statistics.pstdev(firsts) > 2.0 and firsts[-1] - firsts[0] > 8.0
    assert rec.peak <= 4
    assert not any(d for _, d in rec.results)


async def test_update_keeps_unchanged_tasks(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    sched = Scheduler("n0", rec.run, rec.sink)
    check = CheckConfig(name="m", kind="ping", target_tags=("core",), replicas=0,
                        interval=10.0, timeout=1.0)  # type: ignore[arg-type]
    view = [AgentInfo(f"n{i}", frozenset({"core"}), f"127.0.0.{i + 1}") for i in range(4)]
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        sched.update([check], view)
        assert {a.target for a in sched.assignments} == {"n1", "n2", "n3"}
        await trio.sleep(25.0)
        started = sched.started
        assert started == 3
        sched.update([check], [*view, AgentInfo("n4", frozenset({"core"}), "127.0.0.5")])
        await trio.lowlevel.checkpoint()
        assert sched.started == started + 1  # only the new target started
        sched.update([check], [v for v in view if v.name != "n2"])
        assert {a.target for a in sched.assignments} == {"n1", "n3"}
        assert sched.started == started + 1
        calls_before = len(rec.calls)
        await trio.sleep(30.0)
        later = [t for t, _ in rec.calls[calls_before:]]
        assert "n2" not in later and "n4" not in later and {"n1", "n3"} <= set(later)
        # a changed address restarts that one assignment only
        moved = [view[0], AgentInfo("n1", frozenset({"core"}), "127.0.0.99"), view[3]]
        sched.update([check], moved)
        await trio.lowlevel.checkpoint()
        assert sched.started == started + 2
        nursery.cancel_scope.cancel()


async def test_degraded_when_loop_blocked() -> None:
    # Real clock on purpose: a runner that blocks the event loop with time.sleep.
    rec = Recorder(block=0.3)
    sched = Scheduler("me", rec.run, rec.sink,
                      SchedulerConfig(degraded_lag=0.1, lag_tick=0.02))
    check = CheckConfig(name="c", kind="ping", targets=("x",), interval=0.5, timeout=0.2,
                        params={"count": 1})  # type: ignore[arg-type]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.run)
            sched.set_assignments([(check, Assignment("c", "x", "x"))])
            await rec.two_results.wait()
            nursery.cancel_scope.cancel()
    assert all(d for _, d in rec.results)
    assert sched.max_lag >= 0.2


async def test_not_degraded_when_idle() -> None:
    rec = Recorder()
    sched = Scheduler("me", rec.run, rec.sink, SchedulerConfig(degraded_lag=0.1, lag_tick=0.02))
    check = CheckConfig(name="c", kind="ping", targets=("x",), interval=0.2, timeout=0.1,
                        params={"count": 1})  # type: ignore[arg-type]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.run)
            sched.set_assignments([(check, Assignment("c", "x", "x"))])
            await rec.two_results.wait()
            nursery.cancel_scope.cancel()
    assert not any(d for _, d in rec.results)


async def test_failing_runner_does_not_stop_others(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()

    async def flaky(assignment: Assignment, check: CheckConfig) -> Any:
        if assignment.target == "t0":
            raise RuntimeError("broken probe")
        return await rec.run(assignment, check)

    sched = Scheduler("me", flaky, rec.sink)
    sched.set_assignments(pairs(3))
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep(25.0)
        nursery.cancel_scope.cancel()
    assert {t for t, _ in rec.results} == {"t1", "t2"}
    assert len(rec.results) >= 4


class BatchRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[float, list[str]]] = []

    async def batch(self, check: CheckConfig, assignments: Any) -> list[Any]:
        self.batches.append((trio.current_time(), [a.target for a in assignments]))
        for a in assignments:
            self.calls.append((a.target, trio.current_time()))
        await trio.sleep(0.01)
        return [{"ok": True} for _ in assignments]


async def test_due_pings_go_out_in_batches_per_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec = BatchRecorder()
    sched = Scheduler("me", rec.run, rec.sink, SchedulerConfig(tick=0.05),
                      batch_runner=rec.batch)
    sched.set_assignments(pairs(1000, interval=1.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep(10.0)
        nursery.cancel_scope.cancel()
    per_target: dict[str, list[float]] = {}
    for t, at in rec.calls:
        per_target.setdefault(t, []).append(at)
    assert len(per_target) == 1000 and len(rec.results) >= 9000
    # every target on its interval, within jitter (5 %) plus one tick of batching
    gaps = [b - a for ts in per_target.values() for a, b in itertools.pairwise(ts)]
    assert all(0.85 <= g <= 1.15 for g in gaps)
    # one call per tick at most, each carrying many targets: ~20 calls/s, not 1000
    assert len(rec.batches) <= 10.0 / 0.05 + 2
    assert statistics.mean(len(ts) for _, ts in rec.batches) > 30
    starts = [at for at, _ in rec.batches]
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.05 - 1e-9
    assert not rec.running  # no per-target runner was used for a batchable kind


async def test_other_kinds_still_run_one_task_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec = BatchRecorder()
    sched = Scheduler("me", rec.run, rec.sink, batch_runner=rec.batch)
    check = CheckConfig(name="web", kind="http", targets=("a", "b"), interval=5.0,
                        timeout=1.0)  # type: ignore[arg-type]
    sched.set_assignments([(check, Assignment("web", t, t)) for t in ("a", "b")])
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep(12.0)
        nursery.cancel_scope.cancel()
    assert not rec.batches
    assert {t for t, _ in rec.calls} == {"a", "b"} and len(rec.results) >= 4


async def test_dropping_an_assignment_mid_batch(autojump_clock: trio.testing.MockClock) -> None:
    started = trio.Event()
    release = trio.Event()
    seen: list[list[str]] = []

    async def slow_batch(check: CheckConfig, assignments: Any) -> list[Any]:
        seen.append([a.target for a in assignments])
        if "t0" in seen[-1]:
            started.set()
            await release.wait()
        return [{"ok": True} for _ in assignments]

    rec = Recorder()
    sched = Scheduler("me", rec.run, rec.sink, batch_runner=slow_batch)
    check = CheckConfig(name="c", kind="ping", targets=("t0", "t1"), interval=1.0,
                        timeout=1.0)  # type: ignore[arg-type]
    same_slot = [(check, Assignment("c", t, t)) for t in ("t0", "t1")]
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        sched.set_assignments(same_slot)
        with trio.fail_after(5):
            await started.wait()
        sched.set_assignments(same_slot[1:])  # t0 is dropped while its batch runs
        release.set()
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    first = next(i for i, batch in enumerate(seen) if "t0" in batch)
    assert all("t0" not in batch for batch in seen[first + 1:])
    assert "t0" not in {t for t, _ in rec.results}
    assert any(t == "t1" for t, _ in rec.results)


async def test_a_batch_that_overruns_is_cut_off_and_runs_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[float] = []

    async def stuck_once(check: CheckConfig, assignments: Any) -> list[Any]:
        runs.append(trio.current_time())
        if len(runs) == 1:
            await trio.sleep_forever()
        return [{"ok": True} for _ in assignments]

    rec = Recorder()
    sched = Scheduler("me", rec.run, rec.sink, batch_runner=stuck_once)
    sched.set_assignments(pairs(1, interval=10.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep(25.0)
        nursery.cancel_scope.cancel()
    assert "overran twice its timeout" in caplog.text
    assert len(runs) >= 2 and runs[1] - runs[0] >= 2.0  # cut at 2 x 1 s, re-run next slot
    assert len(rec.results) == len(runs) - 1  # the cut run stored nothing


async def test_batches_wait_for_the_concurrency_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    running, peak = 0, 0

    async def slow(check: CheckConfig, assignments: Any) -> list[Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(3.0)
        running -= 1
        return [{"ok": True} for _ in assignments]

    rec = Recorder()
    sched = Scheduler("me", rec.run, rec.sink, SchedulerConfig(max_concurrent=2),
                      batch_runner=slow)  # fmt: skip
    checks = [CheckConfig(name=f"c{i}", kind="ping", targets=("t",), interval=10.0,
                          timeout=2.0) for i in range(6)]  # type: ignore[arg-type]
    sched.set_assignments([(c, Assignment(c.name, "t", "t")) for c in checks])
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep(30.0)
        nursery.cancel_scope.cancel()
    # 6 batches of 3 s each per 10 s on 2 tokens: they queue, none is cut off while queued
    assert peak == 2 and {a for a, _ in rec.results} == {"t"} and len(rec.results) >= 12
