"""How the mesh-wide CLI commands render an answer, partial ones included (no agent needed)."""

from __future__ import annotations

from typing import Any

from meshmon.cli.mesh import history_table, latest_table, matrix_tables, partial_lines


def envelope(**extra: Any) -> dict[str, Any]:
    base = {"asked": 3, "answered": 2, "partial": True, "missing": {"c": "timeout"},
            "details": {"c": "no answer within 1s"}, "truncated": ["b"], "answers": {}}
    return {**base, **extra}


def test_partial_answers_name_every_missing_and_truncated_agent() -> None:
    lines = partial_lines(envelope())
    assert lines[0] == "partial answer: 1 of 3 agent(s) did not answer:"
    assert lines[1] == "  c: timeout (no answer within 1s)"
    assert lines[2].startswith("truncated to the size limit: b")
    assert partial_lines({"missing": {}, "truncated": []}) == []


def test_latest_rows_per_agent() -> None:
    text = latest_table(envelope(answers={
        "a": {"results": [{"check": "p", "target": "b", "timestamp": 0, "success": True,
                           "response_time_ms": 0.25, "loss_pct": 0.0, "error": None}]},
        "b": {"results": [{"check": "p", "target": "a", "timestamp": 0, "success": False,
                           "response_time_ms": None, "loss_pct": 100.0,
                           "error": "no reply"}]}}))  # fmt: skip
    header, row_a, row_b = text.splitlines()
    assert header.split() == ["AGENT", "CHECK", "TARGET", "TIME", "STATUS", "RTT_MS", "LOSS",
                              "ERROR"]  # fmt: skip
    assert row_a.split()[4:7] == ["ok", "0.250", "0%"]
    assert row_b.split()[4:] == ["FAIL", "-", "100%", "no", "reply"]


def test_matrix_grid_marks_self_and_gaps() -> None:
    text = matrix_tables(envelope(agents=["a", "b", "c"], window_s=300, answers={
        "a": {"rows": [{"check": "p", "target": "b", "rtt_median_ms": 1.5, "loss_pct": 0.0}]},
        "b": {"rows": [{"check": "p", "target": "a", "rtt_median_ms": 2.0, "loss_pct": 50.0},
                       {"check": "p", "target": "c", "rtt_median_ms": None,
                        "loss_pct": 100.0}]}}))  # fmt: skip
    lines = text.splitlines()
    assert lines[0].startswith("p (median RTT ms / loss, last 300s")
    assert lines[1].split() == ["FROM", "\\", "TO", "a", "b", "c"]
    assert lines[2].split() == ["a", "x", "1.500/0%", "-"]
    assert lines[3].split() == ["b", "2.000/50%", "x", "-/100%"]
    assert "no results toward members tagged 'q'" in matrix_tables(
        envelope(tag="q", window_s=60, answers={"a": {"rows": []}}))


def test_history_skips_agents_without_points() -> None:
    text = history_table(envelope(check="p", target="t", answers={
        "a": {"points": [], "records": 0},
        "b": {"points": [{"t": 0, "n": 5, "ok": 4, "rtt_ms": 1.0, "rtt_min_ms": 0.5,
                          "rtt_max_ms": 2.0, "loss_pct": 20.0}], "records": 5, "step_s": 60.0}}))
    assert text.splitlines()[0] == "b: 5 result(s), buckets of 60s"
    assert "a:" not in text
    assert history_table(envelope(check="p", target="t")) == (
        "no agent holds results of p toward t in that range")
