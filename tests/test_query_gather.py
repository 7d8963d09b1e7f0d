"""The scatter-gather core without I/O: deadlines, fan-out and the partial bookkeeping.

``simulate`` plays a driver against a fake clock: each agent answers (or fails) a fixed time
after it is asked, or never. Table tests then say who answered, who is missing and why, when
each agent was asked and how many requests were ever in flight at once.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

import pytest

from meshmon.query.gather import ERROR, REFUSED, TIMEOUT, UNREACHABLE, Gather, Outcome

NEVER = None


@dataclass(frozen=True)
class Peer:
    """How a simulated agent behaves: after ``delay`` seconds it answers or fails."""

    delay: float | None
    fails: str | None = None
    truncated: bool = False


@dataclass
class Run:
    outcome: Outcome
    asked_at: dict[str, float]
    max_in_flight: int
    finished_at: float
    cancelled: list[str]


def simulate(peers: dict[str, Peer], timeout: float, request_timeout: float | None = None,
             fanout: int = 16) -> Run:
    now = 0.0
    gather = Gather(peers, now, timeout, request_timeout, fanout)
    events: list[tuple[float, int, str]] = []  # (time, tiebreak, agent)
    asked_at: dict[str, float] = {}
    cancelled: list[str] = []
    max_flight = 0
    n = 0
    while not gather.done:
        for name in gather.take_starts(now):
            asked_at[name] = now
            delay = peers[name].delay
            if delay is not None:
                n += 1
                heapq.heappush(events, (now + delay, n, name))
        max_flight = max(max_flight, len(gather.in_flight))
        wake = gather.next_deadline()
        if events and events[0][0] <= wake:
            now, _, name = heapq.heappop(events)
            peer = peers[name]
            if peer.fails is not None:
                gather.failed(name, peer.fails, f"{name} failed")
            else:
                gather.answered(name, {"results": [], "truncated": peer.truncated})
        else:
            now = max(now, wake)
        cancelled += gather.tick(now)
    return Run(gather.outcome, asked_at, max_flight, now, cancelled)


CASES = [
    # id, peers, timeout, request_timeout, fanout, answered, missing {name: reason}
    ("all answer", {"a": Peer(0.1), "b": Peer(0.2), "c": Peer(0.3)}, 2.0, None, 16,
     {"a", "b", "c"}, {}),
    ("one never answers", {"a": Peer(0.1), "b": Peer(NEVER), "c": Peer(0.3)}, 2.0, None, 16,
     {"a", "c"}, {"b": TIMEOUT}),
    ("too slow for the deadline", {"a": Peer(0.1), "b": Peer(2.5)}, 2.0, None, 16,
     {"a"}, {"b": TIMEOUT}),
    ("failures keep their reason",
     {"a": Peer(0.1, REFUSED), "b": Peer(0.1, UNREACHABLE), "c": Peer(0.1, ERROR),
      "d": Peer(0.1)}, 2.0, None, 16,
     {"d"}, {"a": REFUSED, "b": UNREACHABLE, "c": ERROR}),
    ("fan-out 1 serialises", {"a": Peer(0.5), "b": Peer(0.5), "c": Peer(0.5)}, 2.0, None, 1,
     {"a", "b", "c"}, {}),
    ("fan-out 1, deadline before the last is asked",
     {"a": Peer(0.9), "b": Peer(0.9), "c": Peer(0.9)}, 2.0, None, 1,
     {"a", "b"}, {"c": TIMEOUT}),
    ("black holes hold slots until their request limit",
     {"a": Peer(NEVER), "b": Peer(NEVER), "c": Peer(0.1), "d": Peer(0.1)}, 2.0, 1.0, 2,
     {"c", "d"}, {"a": TIMEOUT, "b": TIMEOUT}),
    ("without a request limit black holes starve the rest",
     {"a": Peer(NEVER), "b": Peer(NEVER), "c": Peer(0.1)}, 2.0, None, 2,
     set(), {"a": TIMEOUT, "b": TIMEOUT, "c": TIMEOUT}),
    ("request limit above the deadline is capped", {"a": Peer(NEVER)}, 1.0, 5.0, 16,
     set(), {"a": TIMEOUT}),
    ("nobody to ask", {}, 2.0, None, 16, set(), {}),
]  # fmt: skip


@pytest.mark.parametrize(("peers", "timeout", "request_timeout", "fanout", "answered", "missing"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gather_table(peers: dict[str, Peer], timeout: float, request_timeout: float | None,
                      fanout: int, answered: set[str], missing: dict[str, str]) -> None:
    run = simulate(peers, timeout, request_timeout, fanout)
    assert set(run.outcome.answers) == answered
    assert {n: m.reason for n, m in run.outcome.missing.items()} == missing
    assert set(run.outcome.asked) == set(peers)
    assert set(run.outcome.answers) | set(run.outcome.missing) == set(peers)
    assert run.max_in_flight <= fanout
    assert run.finished_at <= timeout
    assert run.outcome.partial == bool(missing)


def test_black_hole_request_limit_frees_the_slot_for_the_next_agent() -> None:
    run = simulate({"a": Peer(NEVER), "b": Peer(0.1)}, timeout=2.0, request_timeout=0.5,
                   fanout=1)
    assert run.asked_at == {"a": 0.0, "b": 0.5}
    assert run.cancelled == ["a"]
    assert run.outcome.missing["a"].detail == "no answer within 0.5s"
    assert set(run.outcome.answers) == {"b"}


def test_agents_never_asked_are_named_with_why() -> None:
    run = simulate({"a": Peer(NEVER), "b": Peer(0.1)}, timeout=1.0, fanout=1)
    assert "b" not in run.asked_at
    assert run.outcome.missing["b"].reason == TIMEOUT
    assert "not asked" in run.outcome.missing["b"].detail
    assert run.outcome.missing["a"].detail == "no answer before the question's deadline"


def test_fanout_is_used_in_full_and_agents_are_asked_in_order() -> None:
    peers = {f"n{i:02d}": Peer(0.1) for i in range(40)}
    run = simulate(peers, timeout=2.0, fanout=16)
    assert run.max_in_flight == 16
    assert sorted(run.asked_at, key=lambda n: (run.asked_at[n], n)) == list(peers)
    assert [run.asked_at[n] for n in ("n00", "n15", "n16", "n32")] == pytest.approx(
        [0.0, 0.0, 0.1, 0.2])


def test_late_reports_change_nothing() -> None:
    gather = Gather(["a", "b"], 0.0, 1.0)
    assert gather.take_starts(0.0) == ["a", "b"]
    assert gather.tick(1.0) == ["a", "b"]
    gather.answered("a", {"results": []})
    gather.failed("b", REFUSED, "late")
    assert gather.outcome.answers == {}
    assert {n: m.reason for n, m in gather.outcome.missing.items()} == {"a": TIMEOUT, "b": TIMEOUT}
    assert gather.done and gather.next_deadline() == float("inf")
    assert gather.take_starts(1.5) == []


def test_duplicates_are_asked_once_and_reasons_are_checked() -> None:
    gather = Gather(["a", "a", "b"], 0.0, 1.0)
    assert gather.take_starts(0.0) == ["a", "b"]
    with pytest.raises(ValueError, match="unknown reason"):
        gather.failed("a", "bored", "")
    with pytest.raises(ValueError):
        Gather(["a"], 0.0, 0.0)
    with pytest.raises(ValueError):
        Gather(["a"], 0.0, 1.0, fanout=0)


def test_truncated_answers_make_the_outcome_partial() -> None:
    run = simulate({"a": Peer(0.1, truncated=True), "b": Peer(0.1)}, timeout=1.0)
    assert run.outcome.missing == {}
    assert run.outcome.truncated == ["a"]
    assert run.outcome.partial


@pytest.mark.parametrize("seed", range(200))
def test_random_meshes_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    reasons = [None, None, None, REFUSED, UNREACHABLE, ERROR]
    peers = {f"n{i}": Peer(rng.choice([NEVER, rng.uniform(0, 3)]), rng.choice(reasons))
             for i in range(rng.randint(0, 60))}  # fmt: skip
    timeout = rng.uniform(0.2, 3)
    request_timeout = rng.choice([None, rng.uniform(0.05, 2)])
    fanout = rng.randint(1, 20)
    run = simulate(peers, timeout, request_timeout, fanout)
    out = run.outcome
    assert set(out.answers).isdisjoint(out.missing)
    assert set(out.answers) | set(out.missing) == set(peers)
    assert run.max_in_flight <= fanout
    assert run.finished_at <= timeout + 1e-9
    limit = timeout if request_timeout is None else min(timeout, request_timeout)
    for name in out.answers:  # an answer counts only if it came within its request's limit
        delay = peers[name].delay
        assert delay is not None and delay <= limit + 1e-9
        assert peers[name].fails is None
    for name, miss in out.missing.items():
        if miss.reason != TIMEOUT:
            assert peers[name].fails == miss.reason
