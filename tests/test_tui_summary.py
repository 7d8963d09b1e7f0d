"""The TUI's arithmetic and parsing, without a terminal: verdicts, sparklines, history, sorting,
coverage, and reading the control API's JSON (what a newer or older agent may send too)."""

from __future__ import annotations

import pytest

from meshmon.tui.model import (
    Assignments,
    Coverage,
    FormatError,
    Member,
    Sample,
    parse_alerts,
    parse_members,
    parse_mesh_history,
    parse_mesh_latest,
    parse_mesh_matrix,
    parse_mesh_traces,
)
from meshmon.tui.summary import (
    FAIL_MARK,
    Recent,
    Thresholds,
    ago,
    buckets,
    count_states,
    coverage_rows,
    describe_answer,
    fmt_ms,
    fmt_pct,
    grade_loss,
    grade_rtt,
    prober_rows,
    shorten,
    sort_members,
    sort_targets,
    spark,
    summarise,
)

NOW = 1_800_000_000.0


def sample(agent: str, ok: bool = True, rtt: float | None = 1.0, ago_s: float = 1.0,
           loss: float | None = None, target: str = "t", check: str = "c") -> Sample:
    return Sample(agent=agent, check=check, target=target, timestamp=NOW - ago_s, success=ok,
                  rtt_ms=rtt if ok else None, loss_pct=loss, error=None if ok else "refused")


@pytest.mark.parametrize(("latest", "status", "failing"), [
    ([sample("a"), sample("b"), sample("c")], "ok", ()),
    ([sample("a", ok=False), sample("b", ok=False)], "DOWN", ("a", "b")),
    ([sample("a"), sample("b", ok=False), sample("c")], "PATH 1/3", ("b",)),
    ([sample("a", loss=33.3), sample("b")], "LOSSY", ()),
    ([sample("a", ago_s=600), sample("b", ago_s=700)], "stale", ()),
    # a prober that stopped long ago does not count: the current one decides
    ([sample("a", ok=False, ago_s=600), sample("b")], "ok", ()),
])  # fmt: skip
def test_verdict_separates_target_down_from_one_bad_path(
        latest: list[Sample], status: str, failing: tuple[str, ...]) -> None:
    [row] = summarise(latest, Recent(), NOW)
    assert row.status == status
    assert row.failing == failing


def test_verdict_values_are_over_current_probers() -> None:
    [row] = summarise([sample("a", rtt=1.0), sample("b", rtt=3.0), sample("c", ok=False)],
                      Recent(), NOW)
    assert row.rtt_ms == 2.0  # the median of the replies
    assert row.loss_pct == pytest.approx(100 / 3)  # one of three failed
    assert row.probers == 3


def test_jitter_falls_back_to_consecutive_differences() -> None:
    recent = Recent()
    recent.add([sample("a", rtt=v, ago_s=3 - i) for i, v in enumerate([1.0, 3.0, 2.0])])
    [row] = summarise([sample("a", rtt=2.0, ago_s=1)], recent, NOW)
    assert row.jitter_ms == pytest.approx(1.5)  # |3-1| and |2-3|


def test_staleness_follows_each_probers_own_interval() -> None:
    recent = Recent()
    recent.add([sample("a", ago_s=a) for a in (100, 70, 40)])  # every 30 s
    assert summarise([sample("a", ago_s=40)], recent, NOW)[0].status == "ok"
    recent2 = Recent()
    recent2.add([sample("a", ago_s=a) for a in (43, 42, 41, 40)])  # every second
    assert summarise([sample("a", ago_s=40)], recent2, NOW)[0].status == "stale"


@pytest.mark.parametrize(("values", "line"), [
    ([1.0, 2.0, 3.0], "▁▅█"),
    ([2.0, 2.0], "▅▅"),
    ([1.0, None, False, 8.0], f"▁ {FAIL_MARK}█"),
    ([], ""),
    ([None, None], "  "),
])  # fmt: skip
def test_sparkline(values: list[float | bool | None], line: str) -> None:
    assert spark(values) == line


def test_buckets_take_the_median_and_mark_failures() -> None:
    samples = [sample("a", rtt=1.0, ago_s=55), sample("b", rtt=5.0, ago_s=54),
               sample("c", rtt=3.0, ago_s=53), sample("a", ok=False, ago_s=25),
               sample("a", rtt=9.0, ago_s=400)]  # outside the span
    assert buckets(samples, NOW, 60, 2) == [3.0, False]
    assert buckets([], NOW, 60, 3) == [None, None, None]


def test_recent_deduplicates_bounds_and_prunes() -> None:
    recent = Recent(span=100, max_per_series=3)
    one = sample("a", ago_s=5)
    recent.add([one, one, sample("b", ago_s=5)])
    assert len(recent.of("c", "t")) == 2
    recent.add([sample("a", ago_s=a) for a in (50, 40, 30, 20)])
    assert [s.timestamp for s in recent.of("c", "t") if s.agent == "a"] == \
        [NOW - 30, NOW - 20, NOW - 5]  # fmt: skip
    recent.add([sample("b", ago_s=500)])
    recent.prune(NOW)
    assert all(NOW - s.timestamp <= 100 for s in recent.of("c", "t"))
    assert recent.interval("c", "t", "a") == 12.5  # the median of gaps 10 and 15


def test_prober_rows_name_the_failing_prober() -> None:
    history = [sample("a", rtt=1.0, ago_s=30), sample("a", rtt=2.0, ago_s=20),
               sample("b", ok=False, ago_s=30), sample("b", ok=False, ago_s=20)]
    rows = {r.agent: r for r in prober_rows(history, [sample("a", rtt=2.0, ago_s=2),
                                                      sample("b", ok=False, ago_s=2)], NOW, 300)}
    assert rows["a"].status == "ok" and rows["a"].rtt_ms == 2.0 and rows["a"].loss_pct == 0
    assert rows["b"].status == "FAIL" and rows["b"].loss_pct == 100 and rows["b"].error
    assert rows["a"].jitter_ms == 1.0


def member(name: str, state: str = "alive", rtt: float | None = None, since: float = 0.0,
           tags: tuple[str, ...] = ()) -> Member:
    return Member(name, state, 0, tags, "127.0.0.2:7946", "0.1", since, rtt)


def test_member_sorts_counts_and_filters() -> None:
    ms = [member("c", "dead", 0.5, 30), member("a", "alive", None, 10),
          member("b", "suspect", 0.2, 20, ("x",))]
    assert [m.name for m in sort_members(ms, "name")] == ["a", "b", "c"]
    assert [m.name for m in sort_members(ms, "state")] == ["a", "b", "c"]
    assert [m.name for m in sort_members(ms, "rtt")] == ["b", "c", "a"]  # unknown last
    assert [m.name for m in sort_members(ms, "changed")] == ["c", "b", "a"]
    assert [m.name for m in sort_members(ms, "name", reverse=True)] == ["c", "b", "a"]
    assert count_states(ms) == {"alive": 1, "suspect": 1, "dead": 1, "left": 0}


def test_coverage_gap_counts_live_owners_only() -> None:
    a = Assignments((), (Coverage("c", "t1", ("a", "b"), 2), Coverage("c", "t2", ("a", "z"), 2),
                         Coverage("c", "t3", (), 1)))
    rows = coverage_rows(a, [member("a"), member("b"), member("z", "suspect")], me="b")
    assert [(r.target, r.live, r.gap, r.mine) for r in rows] == [
        ("t1", 2, False, True), ("t2", 1, True, False), ("t3", 0, True, False)]


@pytest.mark.parametrize(("ms", "pct", "rtt_grade", "loss_grade"), [
    (1.0, 0.0, "good", "good"), (80.0, 1.0, "warn", "warn"), (500.0, 50.0, "bad", "bad"),
    (None, None, "none", "none"),
])  # fmt: skip
def test_grades(ms: float | None, pct: float | None, rtt_grade: str, loss_grade: str) -> None:
    t = Thresholds()
    assert grade_rtt(ms, t) == rtt_grade
    assert grade_loss(pct, t) == loss_grade


def test_formatting() -> None:
    assert [fmt_ms(v) for v in (None, 0.0812, 12.34, 250.4)] == ["-", "0.081", "12.3", "250"]
    assert [fmt_pct(v) for v in (None, 0.0, 33.333, 100.0)] == ["-", "0%", "33.3%", "100%"]
    assert [ago(NOW - d, NOW) for d in (5, 125, 7300, 90000)] == ["5s", "2m", "2h", "1d"]
    assert shorten("http://10.0.0.1:8080/health", 12) == "http:…health"
    assert len(shorten("x" * 50, 9)) == 9 and shorten("short", 9) == "short"
    assert describe_answer("mesh", {}, ()) == ""
    assert "b (timeout" in describe_answer("mesh", {"b": "timeout: no answer"}, ["c"])
    assert "own results only" in describe_answer("local", {}, ())


def test_sort_targets_puts_problems_first() -> None:
    rows = summarise([sample("a", target="up"), sample("a", ok=False, target="down"),
                      sample("a", target="p"), sample("b", ok=False, target="p")], Recent(), NOW)
    assert [r.target for r in sort_targets(rows, "status")] == ["down", "p", "up"]


# --- parsing ----------------------------------------------------------------------------------


def test_members_parse_tolerates_older_agents() -> None:
    [m] = parse_members([{"name": "a", "state": "alive", "address": "127.0.0.2",
                          "udp_port": 7946, "tags": ["x"], "incarnation": 3}])
    assert (m.address, m.rtt_ms, m.since, m.tags) == ("127.0.0.2:7946", None, None, ("x",))
    [m] = parse_members([{"name": "a", "rtt_ms": 0.5, "since": 12.0}])
    assert m.rtt_ms == 0.5
    for bad in ({"members": []}, [{"state": "alive"}], [None]):
        with pytest.raises(FormatError):
            parse_members(bad)


def envelope(answers: dict[str, object], **extra: object) -> dict[str, object]:
    return {"question": "latest", "asker": "a", "asked": 3, "answered": len(answers),
            "partial": bool(extra), "missing": {}, "details": {}, "truncated": [],
            "answers": answers, **extra}


def test_mesh_latest_names_the_missing() -> None:
    row = {"check": "c", "target": "t", "timestamp": NOW, "seq": 1, "kind": "ping",
           "success": True, "response_time_ms": 0.1, "loss_pct": 0.0, "jitter_ms": 0.01,
           "error": None, "degraded": False}
    answer = parse_mesh_latest(envelope({"a": {"results": [row]}, "b": {"results": [row]}},
                                        missing={"c": "timeout"},
                                        details={"c": "no answer within 2s"}))
    assert [s.agent for s in answer.data] == ["a", "b"]
    internal = parse_mesh_latest(envelope({"a": {"results": [{**row, "check": "_alerts"}]}}))
    assert internal.data == []  # the agent's own records are not probe results
    assert answer.partial and answer.missing == {"c": "timeout: no answer within 2s"}
    with pytest.raises(FormatError):
        parse_mesh_latest(envelope({"a": {"results": [{"target": "t"}]}}))


def test_mesh_history_and_matrix() -> None:
    history = parse_mesh_history(envelope({"a": {"points": [
        {"t": NOW, "n": 4, "ok": 3, "rtt_ms": 1.5, "loss_pct": 25.0}]}}), "c", "t")
    [s] = history.data
    assert (s.count, s.success, s.loss, s.rtt_ms) == (4, True, 25.0, 1.5)
    matrix = parse_mesh_matrix(envelope({"a": {"rows": [
        {"check": "p", "target": "b", "samples": 3, "loss_pct": 0.0, "rtt_median_ms": 0.2},
        {"check": "q", "target": "b", "samples": 9, "loss_pct": 10.0, "rtt_median_ms": 0.4},
    ]}}, tag="x", window_s=300, agents=["a", "b"]))
    assert matrix.data.agents == ("a", "b")
    assert matrix.data.cells[("a", "b")].samples == 9  # the busiest check toward b


def test_traces_from_full_results() -> None:
    full = {"kind": "trace", "result": {"target_reached": True, "hops": [
        {"ttl": 1, "addresses": ["10.0.0.1"], "sent": 4, "received": 3,
         "latencies_ms": [1.0, 2.0, 3.0]},
        {"ttl": 2, "addresses": [], "sent": 4, "received": 0, "latencies_ms": []}]}}
    traces = parse_mesh_traces(envelope({"a": {"results": [
        {"check": "tr", "target": "t", "timestamp": NOW, "result": full},
        {"check": "tr", "target": "t", "timestamp": NOW}]}}))  # no full result: skipped
    [trace] = traces.data
    assert trace.reached and [h.loss_pct for h in trace.hops] == [25.0, 100.0]
    assert trace.hops[0].avg_ms == 2.0 and trace.hops[1].avg_ms is None


def test_alerts_parse_firing_failing_here_and_resolved() -> None:
    incident = {"id": "x", "kind": "target", "opened_at": NOW - 60, "notifier": "a",
                "probers": ["a", "b"], "rule": "down", "check": "c", "target": "t",
                "duration_s": 60.0, "resolved_at": None}
    alerts = parse_alerts({
        "enabled": True, "rules": ["down", "slow"], "impaired": False,
        "failing_here": [{"rule": "down", "check": "c", "target": "t", "since": NOW - 61},
                         {"rule": "slow", "check": "c", "target": "u", "since": NOW - 5}],
        "firing": [incident], "recent": [{**incident, "target": "v", "resolved_at": NOW}],
        "receivers": ["webhook https://hooks"], "last_error": None})
    assert [(a.state, a.rule, a.target) for a in alerts.alerts] == [
        ("firing", "down", "t"), ("failing here", "slow", "u"), ("resolved", "down", "v")]
    assert alerts.firing == 1 and alerts.rules == ("down", "slow")
    assert alerts.alerts[0].probers == ("a", "b") and alerts.alerts[0].duration_s == 60.0
    assert not parse_alerts({"enabled": False, "rules": [], "firing": [], "recent": []}).enabled


def test_a_prober_with_one_old_result_is_stale_by_the_others_spacing() -> None:
    recent = Recent()
    recent.add([sample("a", ago_s=a) for a in (9, 7, 5, 3, 1)])  # every 2 s
    recent.add([sample("b", ok=False, ago_s=58)])  # probed once, then moved elsewhere
    [row] = summarise([sample("a", ago_s=1), sample("b", ok=False, ago_s=58)], recent, NOW)
    assert row.status == "ok" and row.probers == 1
    history = recent.of("c", "t")
    rows = {r.agent: r.status for r in prober_rows(history, [], NOW, 300)}
    assert rows == {"a": "ok", "b": "stale"}
