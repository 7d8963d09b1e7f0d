"""Seeds: say when one cannot be resolved or reached, and retry joining through them with backoff.

Theory of operation
-------------------
The membership core asks for a join (push-pull) with every seed when the agent starts, and with
a random seed every ``reconnect_interval`` while it knows no other live member. Each failed seed
attempt is reported to :meth:`SeedWatch.failed` (wired as ``MeshService.on_seed_failure``),
which logs one WARNING naming the seed and why: the name does not resolve, nothing listens,
no answer, or TLS refused. While the agent is alone, :meth:`SeedWatch.run` asks every seed again
after 1 s, 2 s, 4 s … up to ``max_delay`` (with jitter, so a fleet restarted at once does not
retry in step). The backoff also bounds the warnings: at most one per seed per attempt. Once the
agent has a peer the backoff resets, and it only looks again every ``max_delay``.

One case is retried sooner: a seed that *refuses* the connection (its host answers, nothing
listens on the port yet) during the agent's first ``quick_for`` seconds. That is what a fleet
started at once sees until the seed's own agent is up, and such an attempt costs a SYN and a
reset, no handshake; waiting 1, 2, 4, 8 s there made an agent join up to several seconds after
its seed was ready (a 50-agent start converged last on such agents). Those attempts come every
``quick`` seconds (jittered) without advancing the backoff, and their warnings are bounded by
logging only the 1st, 2nd, 4th, 8th … refusal of each seed.

Names are resolved at each attempt (by the connect), so a seed whose DNS record appears or
moves later is picked up without a restart.
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Iterator, Sequence
from typing import Protocol

import trio

log = logging.getLogger(__name__)

Addr = tuple[str, int]


def backoff(attempt: int, base: float = 1.0, cap: float = 30.0, jitter: float = 0.0) -> float:
    """Seconds before retry number ``attempt`` (0-based): ``base * 2**attempt``, at most ``cap``.

    ``jitter`` in [0, 1) spreads the delay by ± that fraction (pass ``rng.uniform(-j, j)``-style
    randomness in through it; 0 gives the exact schedule). Pure.
    """
    delay = min(cap, base * 2.0 ** min(attempt, 32))
    return delay * (1.0 + jitter)


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a refused connection: nothing listens."""
    return any(isinstance(c, ConnectionRefusedError) for c in _causes(exc))


def describe_failure(addr: Addr, exc: BaseException) -> str:
    """Why a seed attempt failed, for an operator: resolution, connection or TLS."""
    host, port = addr
    causes = list(_causes(exc))
    if any(isinstance(c, socket.gaierror) for c in causes):
        gai = next(c for c in causes if isinstance(c, socket.gaierror))
        return f"cannot resolve {host!r} ({gai.strerror or gai}); check the name and DNS"
    if refused(exc):
        return (f"nothing listens on {host}:{port} (connection refused); is the agent there "
                "running, and is the port right?")  # fmt: skip
    text = str(exc)
    for prefix in (f"{host}:{port}: ", f"[{host}]:{port}: "):
        text = text.removeprefix(prefix)
    return text


def _causes(exc: BaseException, depth: int = 0) -> Iterator[BaseException]:
    """``exc``, what it was raised from, and the members of exception groups among them."""
    if depth > 20:
        return
    yield exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _causes(inner, depth + 1)
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        yield from _causes(cause, depth + 1)


class Joiner(Protocol):
    """What :meth:`SeedWatch.run` needs from the membership driver."""

    def alone(self) -> bool:
        """True while this node knows no other live member."""
        ...

    def rejoin(self) -> None:
        """Ask every seed for a join again."""
        ...


class SeedWatch:
    """Warns about failing seeds and retries them with exponential backoff while alone."""

    def __init__(self, seeds: Sequence[Addr], base: float = 1.0, max_delay: float = 30.0,
                 rng: random.Random | None = None, quick: float = 0.5,
                 quick_for: float = 30.0) -> None:  # fmt: skip
        self.seeds = list(seeds)
        self.base = base
        """First retry delay: quick enough for a seed that starts a moment after us."""
        self.max_delay = max_delay
        """The longest wait: memberlist's reconnect interval for LAN."""
        self.rng = rng or random.Random()
        self.quick = quick
        """Seconds between retries of a seed that refuses the connection during the first
        ``quick_for`` seconds: a refused connect is a SYN and a reset (no handshake), and half
        a second is the most an agent then waits for a seed that has just started listening."""
        self.quick_for = quick_for
        """Seconds after :meth:`run` starts during which refusals are retried every ``quick``
        seconds: a fleet started at once has its seeds listening well within it; a seed still
        refusing after that is down, and gets the backoff."""
        self.attempt = 0
        self.failures: dict[Addr, int] = {}
        """Failed attempts per seed (shown in warnings and kept for tests and status)."""
        self._started: float | None = None
        self._refusal = False
        """A seed refused since the last retry (inside the quick window)."""
        self._wakeup: trio.Event | None = None

    def next_delay(self) -> float:
        """Seconds until the next retry."""
        return backoff(self.attempt, self.base, self.max_delay, self.rng.uniform(-0.1, 0.1))

    def _quick_window(self) -> bool:
        """Within ``quick_for`` of the start (a refusal before :meth:`run` starts counts too)."""
        return self._started is None or trio.current_time() - self._started < self.quick_for

    def failed(self, addr: Addr, exc: BaseException) -> None:
        """A join attempt through seed ``addr`` failed: log a WARNING with the reason."""
        count = self.failures[addr] = self.failures.get(addr, 0) + 1
        host, port = addr
        seed = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if refused(exc) and self._quick_window():
            self._refusal = True  # retry soon (see the module docstring)
            if self._wakeup is not None:
                self._wakeup.set()
            if count & (count - 1) == 0:  # the 1st, 2nd, 4th, 8th ... refusal
                log.warning("seed %s: %s; retrying every %gs while it refuses, in the agent's "
                            "first %gs (attempt %d, then with backoff)", seed,
                            describe_failure(addr, exc), self.quick, self.quick_for,
                            count)  # fmt: skip
            return
        next_in = backoff(self.attempt, self.base, self.max_delay)
        log.warning("seed %s: %s; retrying with backoff while this agent has no peers "
                    "(attempt %d, next within %.0fs)", seed, describe_failure(addr, exc),
                    count, next_in)  # fmt: skip

    async def run(self, joiner: Joiner) -> None:
        """Re-join through the seeds with backoff while alone; reset once joined."""
        if not self.seeds:
            return
        self._started = trio.current_time()
        while True:
            if joiner.alone():
                self._wakeup = trio.Event()
                if not self._refusal:
                    with trio.move_on_after(self.next_delay()):
                        await self._wakeup.wait()
                if self._refusal:  # a seed is up but not listening yet: look again soon
                    self._refusal = False
                    await trio.sleep(self.quick * (1.0 + self.rng.uniform(-0.2, 0.2)))
                else:
                    self.attempt += 1
                if joiner.alone():
                    joiner.rejoin()
            else:
                self._refusal = False
                self.attempt = 0
                await trio.sleep(self.max_delay)
