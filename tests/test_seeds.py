"""Seed retries: the backoff schedule (pure), failure reasons, the retry loop on a mock clock."""

from __future__ import annotations

import itertools
import logging
import random
import socket

import pytest
import trio
import trio.testing

from meshmon.seeds import SeedWatch, backoff, describe_failure


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "jitter", "delay"),
    [(0, 1.0, 30.0, 0.0, 1.0), (1, 1.0, 30.0, 0.0, 2.0), (4, 1.0, 30.0, 0.0, 16.0),
     (5, 1.0, 30.0, 0.0, 30.0), (1000, 1.0, 30.0, 0.0, 30.0), (2, 0.5, 60.0, 0.0, 2.0),
     (3, 1.0, 30.0, 0.1, 8.8), (3, 1.0, 30.0, -0.1, 7.2)],
)
def test_backoff_doubles_up_to_the_cap(attempt: int, base: float, cap: float, jitter: float,
                                      delay: float) -> None:
    assert backoff(attempt, base, cap, jitter) == pytest.approx(delay)


def _raised_from(outer: Exception, cause: BaseException) -> Exception:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise outer from exc
    except Exception as exc:
        return exc


def test_failure_reasons_say_resolve_or_reach() -> None:
    gai = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    exc = _raised_from(OSError("seed.example:7946: cannot connect"), gai)
    assert describe_failure(("seed.example", 7946), exc) == (
        "cannot resolve 'seed.example' (Name or service not known); check the name and DNS")
    group = ExceptionGroup("attempts", [ConnectionRefusedError(111, "Connection refused")])
    exc = _raised_from(OSError("all attempts to connect failed"), group)
    assert describe_failure(("127.0.0.9", 1), exc).startswith(
        "nothing listens on 127.0.0.9:1 (connection refused)")
    assert describe_failure(("10.0.0.1", 7946), OSError("10.0.0.1:7946: no TLS answer")) == (
        "no TLS answer")


class FakeMesh:
    """Alone until ``joined_after`` rejoins; records when each rejoin happened."""

    def __init__(self, joined_after: int) -> None:
        self.joined_after = joined_after
        self.rejoins: list[float] = []

    def alone(self) -> bool:
        return len(self.rejoins) < self.joined_after

    def rejoin(self) -> None:
        self.rejoins.append(trio.current_time())


async def test_retries_back_off_while_alone_and_stop_once_joined(
        autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    watch = SeedWatch([("10.0.0.1", 7946)], base=1.0, max_delay=30.0, rng=random.Random(1))
    watch.next_delay = lambda: backoff(watch.attempt, 1.0, 30.0)  # type: ignore[method-assign]
    mesh = FakeMesh(joined_after=7)
    start = trio.current_time()
    with trio.move_on_after(500):
        await watch.run(mesh)
    gaps = [round(b - a, 6) for a, b in zip([start, *mesh.rejoins], mesh.rejoins, strict=False)]
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]  # then joined: no more rejoins
    assert watch.attempt == 0


async def test_no_seeds_no_task(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(1):
        await SeedWatch([]).run(FakeMesh(joined_after=1))


def test_each_failure_is_one_warning_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    watch = SeedWatch([("127.0.0.9", 17999)])
    with caplog.at_level(logging.WARNING, logger="meshmon.seeds"):
        for _ in range(2):
            watch.failed(("127.0.0.9", 17999), OSError("127.0.0.9:17999: no answer within 1s"))
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    assert caplog.records[0].getMessage().startswith("seed 127.0.0.9:17999: no answer within 1s;")
    assert "(attempt 2," in caplog.records[1].getMessage()
    assert watch.failures == {("127.0.0.9", 17999): 2}


class RefusingMesh(FakeMesh):
    """Alone; every rejoin is refused by the seed (nothing listens) until ``joined_after``."""

    def __init__(self, watch: SeedWatch, joined_after: int) -> None:
        super().__init__(joined_after)
        self.watch = watch

    def rejoin(self) -> None:
        super().rejoin()
        if self.alone():
            self.watch.failed(self.watch.seeds[0], ConnectionRefusedError(111, "refused"))


async def test_a_refusing_seed_is_retried_quickly_at_start_then_with_backoff(
        autojump_clock: trio.testing.MockClock,
        caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    watch = SeedWatch([("10.0.0.1", 7946)], rng=random.Random(1), quick=0.5, quick_for=10.0)
    mesh = RefusingMesh(watch, joined_after=30)
    start = trio.current_time()
    with caplog.at_level(logging.WARNING, logger="meshmon.seeds"):
        watch.failed(watch.seeds[0], ConnectionRefusedError(111, "refused"))  # before run: none
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.run, mesh)
            await trio.sleep(0.001)
            watch.failed(watch.seeds[0], ConnectionRefusedError(111, "refused"))  # the first join
            assert not mesh.rejoins
            await trio.sleep(60)
            nursery.cancel_scope.cancel()
    quick = [t - start for t in mesh.rejoins if t - start <= 10.0]
    gaps = [b - a for a, b in itertools.pairwise(quick)]
    assert len(quick) >= 15 and all(0.3 < g < 0.7 for g in gaps)  # every ~0.5 s, no backoff
    later = [t - start for t in mesh.rejoins if t - start > 11.0]
    assert later and all(b - a > 0.9 for a, b in itertools.pairwise(later))  # backoff
    refusals = [r for r in caplog.records if "while it refuses" in r.getMessage()]
    counts = sorted(watch.failures.values())
    assert counts and len(refusals) < counts[-1] // 2  # the 1st, 2nd, 4th ... refusal only
    assert [int(r.getMessage().rsplit("(attempt ", 1)[1].split(",")[0]) for r in refusals] == [
        2**i for i in range(len(refusals))]
