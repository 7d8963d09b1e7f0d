"""Seed retries: the backoff schedule (pure), failure reasons, the retry loop on a mock clock."""

from __future__ import annotations

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
