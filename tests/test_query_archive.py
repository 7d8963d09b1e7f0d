"""The archive's arithmetic (:mod:`meshmon.query.archive`): which part of a history question is
the aggregator's, at what resolution, and how its rows become points. Plain tables."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshmon.query import History
from meshmon.query.archive import (
    archive_answers,
    archive_range,
    downsample_points,
    merge,
    resolution_for,
    row_point,
)


@pytest.mark.parametrize(("oldest", "expected"), [
    ([], (10.0, 100.0)),                 # nobody answered: the whole range
    ([None, None], (10.0, 100.0)),       # nobody holds the series
    ([5.0, 10.0], None),                 # every holder covers the range
    ([5.0, 40.0], (10.0, 40.0)),         # one holder starts later: up to it
    ([5.0, 500.0], (10.0, 100.0)),       # one starts after the range: all of it
])  # fmt: skip
def test_archive_range(oldest: list[float | None], expected: tuple[float, float] | None) -> None:
    answers = {f"a{i}": {"points": [], "oldest": o} for i, o in enumerate(oldest)}
    assert archive_range(History("c", "t", 10.0, 100.0), answers, now=1000.0) == expected


@pytest.mark.parametrize(("span", "points", "expected"), [
    (3600, 200, "raw"),      # a point every 18 s
    (6 * 3600, 200, "1m"),   # every 108 s
    (3 * 86400, 200, "1m"),
    (7 * 86400, 200, "1h"),
    (600, 1, "1m"),
])  # fmt: skip
def test_resolution_for(span: float, points: int, expected: str) -> None:
    assert resolution_for(0.0, span, points) == expected


def test_rows_become_points() -> None:
    raw = {"time": "2024-01-01T00:00:00+00:00", "agent": "a", "success": True, "rtt_ms": 2.0,
           "loss": 1 / 3}  # fmt: skip
    assert row_point(raw) == {"t": 1704067200.0, "n": 1, "ok": 1, "rtt_ms": 2.0,
                              "rtt_min_ms": 2.0, "rtt_max_ms": 2.0,
                              "loss_pct": pytest.approx(100 / 3)}  # fmt: skip
    failed = {**raw, "success": False, "rtt_ms": 9.0, "loss": 1.0}
    assert row_point(failed)["rtt_ms"] is None and row_point(failed)["ok"] == 0  # type: ignore[index]
    bucket = {"time": "2024-01-01T00:01:00+00:00", "agent": "a", "count": 6, "failures": 2,
              "loss": 0.5, "rtt_min_ms": 1.0, "rtt_avg_ms": 3.0, "rtt_max_ms": 7.0}  # fmt: skip
    assert row_point(bucket) == {"t": 1704067260.0, "n": 6, "ok": 4, "rtt_ms": 3.0,
                                 "rtt_min_ms": 1.0, "rtt_max_ms": 7.0, "loss_pct": 50.0}
    assert row_point({"time": "never", "agent": "a"}) is None


def test_merge_weighs_rtt_by_replies_and_loss_by_results() -> None:
    a = {"t": 0.0, "n": 4, "ok": 3, "rtt_ms": 2.0, "rtt_min_ms": 1.0, "rtt_max_ms": 3.0,
         "loss_pct": 25.0}  # fmt: skip
    b = {"t": 5.0, "n": 1, "ok": 1, "rtt_ms": 6.0, "rtt_min_ms": 6.0, "rtt_max_ms": 6.0,
         "loss_pct": 0.0}  # fmt: skip
    c = {"t": 6.0, "n": 5, "ok": 0, "rtt_ms": None, "rtt_min_ms": None, "rtt_max_ms": None,
         "loss_pct": 100.0}  # fmt: skip
    got = merge([a, b, c], 0.0)
    assert (got["n"], got["ok"], got["rtt_min_ms"], got["rtt_max_ms"]) == (10, 4, 1.0, 6.0)
    assert got["rtt_ms"] == pytest.approx((2.0 * 3 + 6.0) / 4)
    assert got["loss_pct"] == pytest.approx((25.0 * 4 + 100.0 * 5) / 10)


def test_downsampling_keeps_every_result_in_fewer_points() -> None:
    points = [{"t": float(t), "n": 1, "ok": 1, "rtt_ms": 1.0, "rtt_min_ms": 1.0,
               "rtt_max_ms": 1.0, "loss_pct": 0.0} for t in range(100)]  # fmt: skip
    same, step = downsample_points(points, 100, 0.0, 100.0)
    assert step is None and same == points
    fewer, step = downsample_points(points, 10, 0.0, 100.0)
    assert step == 10.0 and len(fewer) == 10 and sum(p["n"] for p in fewer) == 100
    assert [p["t"] for p in fewer] == [float(t) for t in range(0, 100, 10)]


def test_each_agent_keeps_only_what_it_does_not_hold() -> None:
    def row(agent: str, t: float) -> dict[str, Any]:
        return {"time": f"2024-01-01T00:00:{t:02.0f}+00:00", "agent": agent, "success": True,
                "rtt_ms": 1.0, "loss": 0.0}  # fmt: skip

    t0 = 1704067200.0
    rows = [row("a", 10), row("a", 30), row("b", 10), row("b", 30), row("c", 30), row("a", 50)]
    answers = {"a": {"oldest": t0 + 20}, "b": {"oldest": None}}
    got = archive_answers(rows, answers, 100, t0, t0 + 40)
    assert {k: [p["t"] - t0 for p in v["points"]] for k, v in got.items()} == {
        "a": [10.0], "b": [10.0, 30.0], "c": [30.0]}  # b holds nothing, c did not answer
    assert got["b"]["records"] == 2 and not got["b"]["downsampled"]


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=1e9, max_value=4e9, allow_nan=False))
def test_an_archive_bound_lands_on_the_microsecond_an_upload_stores(t: float) -> None:
    """The aggregator's ``until`` is exclusive: a bound equal to a stored time must be that
    time to the microsecond (``round(t * 1e6)``, as uploads send it), or the agent's own oldest
    result comes back from the archive too (``fromtimestamp`` is a microsecond off for ~1 in 8
    times)."""
    from meshmon.sync.archive import _iso

    since_epoch = dt.datetime.fromisoformat(_iso(t)) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert since_epoch // dt.timedelta(microseconds=1) == round(t * 1e6)
