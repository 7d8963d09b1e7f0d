"""An agent's own answers (from a real ring store), their size limit, and the query wire."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from meshmon import results as r
from meshmon.config import CheckConfig, StoreConfig
from meshmon.query import answers
from meshmon.query.answers import Context, check_answer, downsample, fit
from meshmon.query.wire import (
    MIN_ANSWER_BYTES,
    AnswerError,
    History,
    Latest,
    Matrix,
    QueryFormatError,
    Refused,
    decode_answer,
    decode_request,
    encode_answer,
    encode_error,
    encode_refusal,
    encode_request,
)
from meshmon.results import encode_result
from meshmon.store import RingStore

NOW = 1_700_000_000.0
MESH_PING = CheckConfig(name="mesh-ping", kind="ping", target_tags=("dc1",))
OTHER_TAG = CheckConfig(name="dc2-ping", kind="ping", target_tags=("dc2",))
WEB = CheckConfig(name="web", kind="tcp", targets=("127.0.0.1:80",))


def ping(target: str, ts: float, rtts: tuple[float, ...], lost: int = 0,
         check: str = "mesh-ping") -> r.MonitoringResult:  # fmt: skip
    avg = sum(rtts) / len(rtts) if rtts else None
    return r.Ping(agent="me", check=check, target=target, family=4, started_at=ts,
                  duration_ms=1.0,
                  result=r.PingResult(len(rtts), lost, rtts, (), avg, "127.0.0.9"))  # fmt: skip


def tcp(target: str, ts: float, ok: bool, rtt: float | None = None) -> r.MonitoringResult:
    return r.TcpConnect(agent="me", check="web", target=target, family=4, started_at=ts,
                        duration_ms=1.0,
                        result=r.TcpConnectResult(ok, rtt, None if ok else "refused",
                                                  "127.0.0.1", 80))  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RingStore]:
    with RingStore(tmp_path / "store", StoreConfig(fsync="never")) as s:
        yield s


def put(store: RingStore, *items: r.MonitoringResult) -> None:
    store.append_batch([(x.started_at, x.check, x.target, [encode_result(x), False])
                        for x in items])  # fmt: skip


# --- latest -----------------------------------------------------------------------------------


def test_latest_is_the_newest_per_series_newest_first(store: RingStore) -> None:
    put(store, ping("b", NOW - 20, (1.0,)), ping("b", NOW - 10, (2.0, 4.0), lost=2),
        tcp("127.0.0.1:80", NOW - 15, False), ping("c", NOW - 5, ()))
    data = answers.answer(store, Latest(), Context(NOW))
    rows = data["results"]
    assert [(x["check"], x["target"]) for x in rows] == [
        ("mesh-ping", "c"), ("mesh-ping", "b"), ("web", "127.0.0.1:80")]
    b = rows[1]
    assert b["timestamp"] == NOW - 10 and b["success"] is True
    assert b["response_time_ms"] == 3.0 and b["loss_pct"] == 50.0 and b["jitter_ms"] == 2.0
    assert rows[0]["success"] is False and rows[0]["loss_pct"] is None  # nothing was sent
    web = rows[2]
    assert web["kind"] == "tcp" and web["error"] == "refused" and web["loss_pct"] is None
    assert "result" not in web
    assert data["truncated"] is False


def test_latest_filters_and_full_results(store: RingStore) -> None:
    put(store, ping("b", NOW - 20, (1.0,)), ping("c", NOW - 10, (2.0,)))
    data = answers.answer(store, Latest(target="b", full=True), Context(NOW))
    assert [x["target"] for x in data["results"]] == ["b"]
    assert data["results"][0]["result"]["result"]["success_latencies"] == [1.0]


def test_an_unreadable_record_is_a_failed_row_not_an_exception(store: RingStore) -> None:
    store.append(NOW, "mesh-ping", "b", [b"not a result", False])
    (row,) = answers.answer(store, Latest(), Context(NOW))["results"]
    assert row["success"] is False and "unreadable" in row["error"]


# --- matrix -----------------------------------------------------------------------------------


def tagged(tag: str) -> list[str]:
    return {"dc1": ["a", "b", "c"], "dc2": ["x"]}.get(tag, [])


def test_matrix_stats_per_tagged_target(store: RingStore) -> None:
    put(store,
        ping("b", NOW - 30, (1.0, 3.0)), ping("b", NOW - 20, (2.0,), lost=1),
        ping("c", NOW - 10, (), lost=2),
        ping("b", NOW - 900, (100.0,)),              # outside the window
        ping("x", NOW - 10, (5.0,), check="dc2-ping"),  # another tag's check
        ping("zz", NOW - 10, (5.0,)))                # a target not carrying the tag
    ctx = Context(NOW, (MESH_PING, OTHER_TAG, WEB), tagged)
    rows = answers.answer(store, Matrix("dc1", window=300), ctx)["rows"]
    assert [(x["check"], x["target"]) for x in rows] == [("mesh-ping", "b"), ("mesh-ping", "c")]
    b, c = rows
    assert b["samples"] == 2 and b["loss_pct"] == pytest.approx(25.0)
    assert b["rtt_median_ms"] == 2.0 and b["rtt_avg_ms"] == 2.0
    assert b["last"] == NOW - 20 and b["last_success"] is True
    assert c["loss_pct"] == 100.0 and c["rtt_median_ms"] is None and c["last_success"] is False


def test_matrix_check_filter(store: RingStore) -> None:
    put(store, ping("b", NOW - 10, (1.0,)))
    ctx = Context(NOW, (MESH_PING,), tagged)
    assert answers.answer(store, Matrix("dc1", check="other"), ctx)["rows"] == []
    assert len(answers.answer(store, Matrix("dc1", check="mesh-ping"), ctx)["rows"]) == 1


# --- history ----------------------------------------------------------------------------------


def test_history_raw_points_oldest_first(store: RingStore) -> None:
    put(store, *(ping("b", NOW - 100 + i * 10, (float(i),)) for i in range(10)))
    q = History("mesh-ping", "b", since=NOW - 55, points=200)
    data = answers.answer(store, q, Context(NOW))
    assert [p["t"] for p in data["points"]] == [NOW - 50 + i * 10 for i in range(5)]
    assert data["points"][0] == {"t": NOW - 50, "n": 1, "ok": 1, "rtt_ms": 5.0,
                                 "rtt_min_ms": 5.0, "rtt_max_ms": 5.0, "loss_pct": 0.0}
    assert data["downsampled"] is False and data["step_s"] is None
    assert data["records"] == 5 and data["oldest"] == NOW - 100 and data["truncated"] is False


def test_history_downsamples_into_equal_buckets(store: RingStore) -> None:
    put(store, *(ping("b", NOW - 100 + i, (float(i % 2),), lost=i % 2) for i in range(100)))
    data = answers.answer(store, History("mesh-ping", "b", NOW - 100, NOW, points=10),
                          Context(NOW))  # fmt: skip
    assert data["downsampled"] is True and data["step_s"] == pytest.approx(10.0)
    assert len(data["points"]) == 10 and data["records"] == 100
    assert sum(p["n"] for p in data["points"]) == 100
    first = data["points"][0]
    assert first["n"] == 10 and first["ok"] == 10 and first["loss_pct"] == pytest.approx(100 / 3)
    assert first["rtt_min_ms"] == 0.0 and first["rtt_max_ms"] == 1.0


def test_history_of_an_unknown_series_is_empty(store: RingStore) -> None:
    data = answers.answer(store, History("mesh-ping", "nobody", NOW - 100), Context(NOW))
    assert data["points"] == [] and data["records"] == 0 and data["oldest"] is None


def test_history_reads_at_most_its_cap(store: RingStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answers, "HISTORY_RECORDS", 30)
    put(store, *(ping("b", NOW - 100 + i, (1.0,)) for i in range(50)))
    data = answers.answer(store, History("mesh-ping", "b", NOW - 200, points=100), Context(NOW))
    assert data["records"] == 30 and data["truncated"] is True
    assert data["points"][0]["t"] == NOW - 80  # the newest 30 kept


@pytest.mark.parametrize(("n", "points"), [(0, 5), (5, 5), (6, 5), (1000, 7), (1000, 1)])
def test_downsample_counts_every_item_once(n: int, points: int) -> None:
    items = [(NOW + i * 0.37, ping("b", NOW, (1.0,))) for i in range(n)]
    out, step = downsample(items, points, NOW - 10, NOW + n)
    assert len(out) <= max(points, 0) and sum(p["n"] for p in out) == n
    assert (step is None) == (n <= points)
    assert [p["t"] for p in out] == sorted(p["t"] for p in out)


# --- size limit -------------------------------------------------------------------------------


def rows(n: int) -> list[dict[str, Any]]:
    return [{"check": "c", "target": f"t{i:04d}", "timestamp": NOW - i} for i in range(n)]


@pytest.mark.parametrize("limit", [MIN_ANSWER_BYTES, 3000, 10_000])
def test_fit_keeps_the_newest_and_marks_truncated(limit: int) -> None:
    data = {"results": rows(500), "truncated": False}
    body = fit("latest", data, limit)
    assert len(body) <= limit
    out = decode_answer(body)
    kept = out["results"]
    assert out["truncated"] is True and 0 < len(kept) < 500
    assert kept == rows(len(kept))  # the first (newest) ones
    bigger = encode_answer({"results": rows(len(kept) + 1), "truncated": True})
    assert len(bigger) > limit  # as many as fit, not fewer


def test_fit_history_keeps_the_newest_points_at_the_end() -> None:
    points = [{"t": float(i), "n": 1} for i in range(500)]
    out = decode_answer(fit("history", {"points": points, "truncated": False}, 2000))
    assert out["truncated"] is True and out["points"][-1] == {"t": 499.0, "n": 1}


def test_fit_leaves_a_small_answer_alone_and_refuses_an_impossible_limit() -> None:
    data = {"results": rows(3), "truncated": False}
    assert decode_answer(fit("latest", data, 10_000)) == data
    with pytest.raises(ValueError, match="empty latest answer"):
        fit("latest", {"results": rows(3), "truncated": False, "pad": "x" * 100}, 50)


# --- the wire ---------------------------------------------------------------------------------


@pytest.mark.parametrize("question", [
    Latest(), Latest("c", "t", True), Matrix("dc1"), Matrix("dc1", "c", 60.0),
    History("c", "t", NOW - 3600), History("c", "t", NOW - 60, NOW, 2000),
])  # fmt: skip
def test_request_round_trip(question: Any) -> None:
    assert decode_request(encode_request(question, 4096)) == (question, 4096)


def raw(q: str = "latest", a: Any = None, m: Any = 4096, v: Any = 1) -> bytes:
    return cbor2.dumps({"v": v, "q": q, "a": {} if a is None else a, "max": m})


@pytest.mark.parametrize(("body", "complaint"), [
    (b"\xff\x00", "not valid CBOR"),
    (cbor2.dumps([1, 2]), "not a CBOR map"),
    (raw(v=2), "version 2"),
    (raw(q="everything"), "unknown question"),
    (raw(m=10), "'max'"),
    (raw(m=True), "'max'"),
    (raw(m=2**30), "'max'"),
    (raw(a=[1]), "'a' map"),
    (raw(a={"check": ""}), "'check'"),
    (raw(a={"target": 7}), "'target'"),
    (raw(a={"check": "x" * 300}), "'check'"),
    (raw("matrix", {"window": 60}), "'tag'"),
    (raw("matrix", {"tag": "t", "window": 0}), "'window'"),
    (raw("matrix", {"tag": "t", "window": float("nan")}), "'window'"),
    (raw("matrix", {"tag": "t"}), "'window'"),
    (raw("history", {"check": "c", "target": "t", "points": 5}), "'since'"),
    (raw("history", {"check": "c", "target": "t", "since": 1.0, "points": 0}), "'points'"),
    (raw("history", {"check": "c", "target": "t", "since": 1.0, "points": 9999}), "'points'"),
    (raw("history", {"target": "t", "since": 1.0, "points": 5}), "'check'"),
    (raw("history", {"check": "c", "target": "t", "since": "1h", "points": 5}), "'since'"),
])  # fmt: skip
def test_malformed_requests_name_the_field(body: bytes, complaint: str) -> None:
    with pytest.raises(QueryFormatError, match=complaint):
        decode_request(body)


def test_answers_refusals_and_errors_decode_apart() -> None:
    assert decode_answer(encode_answer({"results": []})) == {"results": []}
    with pytest.raises(Refused, match="not a member"):
        decode_answer(encode_refusal("not a member"))
    with pytest.raises(AnswerError, match="malformed"):
        decode_answer(encode_error("malformed question"))
    with pytest.raises(QueryFormatError):
        decode_answer(cbor2.dumps({"v": 1, "data": {1: 2}}))


@pytest.mark.parametrize(("kind", "data", "complaint"), [
    ("latest", {}, "'results' list"),
    ("latest", {"results": "x"}, "'results' list"),
    ("matrix", {"rows": [1]}, r"rows\[0\] is not a map"),
    ("history", {"points": [{"t": [1, 2]}]}, r"points\[0\].t is not a plain value"),
    ("latest", {"results": [{"result": "x", "check": {"a": 1}}]}, "check is not a plain"),
])  # fmt: skip
def test_check_answer_refuses_wrong_shapes(kind: str, data: dict[str, Any],
                                           complaint: str) -> None:  # fmt: skip
    with pytest.raises(QueryFormatError, match=complaint):
        check_answer(kind, data)


def test_check_answer_drops_unknown_fields() -> None:
    data = {"results": [{"check": "c", "new": 1, "result": {"x": 1}}], "extra": {"y": 2},
            "truncated": "yes"}  # fmt: skip
    assert check_answer("latest", data) == {"results": [{"check": "c", "result": {"x": 1}}],
                                            "truncated": False}  # fmt: skip


def test_matrix_reads_at_most_its_budget(store: RingStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answers, "MATRIX_TOTAL", 5)
    put(store, *(ping(t, NOW - 10 - i, (1.0,)) for t in ("a", "b", "c") for i in range(3)))
    data = answers.answer(store, Matrix("dc1"), Context(NOW, (MESH_PING,), tagged))
    assert data["truncated"] is True
    assert [(x["target"], x["samples"]) for x in data["rows"]] == [("a", 3), ("b", 2)]
