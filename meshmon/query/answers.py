"""An agent's own answers to the questions, from its ring store, fitted to a size limit.

Each answer is the per-agent shape documented in :mod:`meshmon.query`. The functions are
synchronous (the store's reads are) and bounded: a matrix reads at most
:data:`MATRIX_RECORDS` results per series and a history at most :data:`HISTORY_RECORDS`; the
service runs them in a worker thread, one at a time. :func:`fit` cuts an answer to its byte
limit, dropping the least interesting items (the oldest) and marking it ``truncated``.
:func:`check_answer` is the asker's side: an answer from a peer must have the shape of its
question before it is passed on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from meshmon.config import CheckConfig
from meshmon.query.wire import History, Latest, Matrix, QueryFormatError, Question, encode_answer
from meshmon.store import Record

if TYPE_CHECKING:  # the result model loads with the first question, not with every agent
    from meshmon.results import MonitoringResult

MATRIX_RECORDS = 2000
"""Results read per (check, target) for a matrix cell: a 5-minute window at 1 probe/s is 300."""
MATRIX_TOTAL = 20_000
"""Results read for one matrix answer; cells beyond it are left out (``truncated``). Decoding
a stored result with every field checked costs ~10-20 us idle, so this bounds an answer to
a few hundred ms of a worker thread."""
HISTORY_RECORDS = 10_000
"""Results read for one history answer (the newest; ``truncated`` when older ones are left
out): 2.8 hours at one probe a second, a few hundred ms of decoding at most."""


class ResultSource(Protocol):
    """The reads a store offers (:class:`meshmon.store.RingStore` and its async wrapper)."""

    def latest(self, *, check: str | None = None, target: str | None = None) -> list[Record]: ...

    def query(self, *, check: str | None = None, target: str | None = None,
              since: float | None = None, until: float | None = None, limit: int = 1000,
              order: Literal["newest", "oldest"] = "newest") -> list[Record]: ...  # fmt: skip


@dataclass(frozen=True)
class Context:
    """What an agent knows besides its store."""

    now: float
    """Wall-clock seconds."""
    checks: Sequence[CheckConfig] = ()
    tagged: Callable[[str], list[str]] = lambda tag: []
    """Names of the members carrying a tag, in this agent's view."""


@dataclass(frozen=True)
class Probes:
    """What one result measured: probes sent and lost, reply RTTs, jitter."""

    sent: int
    lost: int
    rtts: tuple[float, ...]
    jitter_ms: float | None
    counted: bool
    """True when the kind counts its probes (ping, UDP); else one result is one probe."""


def probes_of(result: MonitoringResult) -> Probes:
    """The probes of one result, whatever its kind."""
    from meshmon.results import PingResult, UdpConnectResult

    payload = result.result
    if isinstance(payload, PingResult):
        return Probes(payload.sent, payload.failures, payload.success_latencies,
                      payload.jitter_ms, True)  # fmt: skip
    if isinstance(payload, UdpConnectResult) and payload.sent > 0:
        return Probes(payload.sent, max(0, payload.sent - payload.received),
                      payload.latencies_ms, payload.jitter_ms, True)  # fmt: skip
    rtt = result.response_time_ms()
    ok = result.is_successful()
    return Probes(1, 0 if ok else 1, (rtt,) if ok and rtt is not None else (), None, False)


def _decode(rec: Record) -> tuple[MonitoringResult | None, bool, str | None]:
    """(result, degraded, error) of a stored record (``[encoded result, degraded]``, perhaps
    with a summary word: :func:`~meshmon.results.encoded.stored_value`)."""
    from meshmon.results import ResultDecodeError, decode_result
    from meshmon.results.encoded import unstored

    try:
        encoded, degraded = unstored(rec.value())
        return decode_result(encoded), bool(degraded), None
    except (ResultDecodeError, ValueError, TypeError) as exc:
        return None, False, f"unreadable record: {exc}"


def _median_ms(rtts: Sequence[float]) -> float | None:
    from meshmon.results.stats import median_ms

    return median_ms(rtts)


def _pct(lost: int, sent: int) -> float | None:
    return 100.0 * lost / sent if sent > 0 else None


def latest_row(rec: Record, full: bool = False) -> dict[str, Any]:
    """One ``latest`` row."""
    row: dict[str, Any] = {"check": rec.check, "target": rec.target, "timestamp": rec.ts,
                           "seq": rec.seq}  # fmt: skip
    result, degraded, error = _decode(rec)
    if result is None:
        row.update(kind=None, success=False, response_time_ms=None, loss_pct=None,
                   jitter_ms=None, error=error, degraded=False)  # fmt: skip
        return row
    p = probes_of(result)
    row.update(kind=result.kind, success=result.is_successful(),
               response_time_ms=result.response_time_ms(),
               loss_pct=_pct(p.lost, p.sent) if p.counted else None, jitter_ms=p.jitter_ms,
               error=result.error_message(), degraded=degraded)  # fmt: skip
    if full:
        from meshmon.results import to_dict

        row["result"] = to_dict(result)
    return row


def answer_latest(store: ResultSource, q: Latest) -> dict[str, Any]:
    """Newest result per series, newest first."""
    records = sorted(store.latest(check=q.check, target=q.target), key=lambda r: -r.ts)
    return {"results": [latest_row(r, q.full) for r in records], "truncated": False}


@dataclass
class _Stats:
    """Probes and replies accumulated over several results."""

    n: int = 0
    ok: int = 0
    sent: int = 0
    lost: int = 0

    def __post_init__(self) -> None:
        self.rtts: list[float] = []

    def add(self, result: MonitoringResult | None) -> None:
        self.n += 1
        if result is None:  # unreadable: a result we cannot count as a success
            self.sent += 1
            self.lost += 1
            return
        p = probes_of(result)
        self.ok += result.is_successful()
        self.sent += p.sent
        self.lost += p.lost
        self.rtts.extend(p.rtts)

    def avg(self) -> float | None:
        return sum(self.rtts) / len(self.rtts) if self.rtts else None


def answer_matrix(store: ResultSource, q: Matrix, ctx: Context) -> dict[str, Any]:
    """Recent statistics toward each member carrying the tag, per mesh check."""
    targets = sorted(set(ctx.tagged(q.tag)))
    rows: list[dict[str, Any]] = []
    budget = MATRIX_TOTAL
    for check in ctx.checks:
        if q.tag not in check.target_tags or (q.check is not None and check.name != q.check):
            continue
        for target in targets:
            if budget <= 0:
                return {"rows": rows, "truncated": True}
            records = store.query(check=check.name, target=target, since=ctx.now - q.window,
                                  limit=min(MATRIX_RECORDS, budget))  # newest first  # fmt: skip
            budget -= len(records)
            if not records:
                continue
            stats = _Stats()
            newest: tuple[float, bool] | None = None
            for rec in records:
                result, _, _ = _decode(rec)
                stats.add(result)
                if newest is None or rec.ts > newest[0]:
                    newest = (rec.ts, result is not None and result.is_successful())
            assert newest is not None
            rows.append({"check": check.name, "target": target, "samples": stats.n,
                         "loss_pct": _pct(stats.lost, stats.sent),
                         "rtt_median_ms": _median_ms(stats.rtts), "rtt_avg_ms": stats.avg(),
                         "last": newest[0], "last_success": newest[1]})  # fmt: skip
    return {"rows": rows, "truncated": False}


def _point(t: float, stats: _Stats) -> dict[str, Any]:
    return {"t": t, "n": stats.n, "ok": stats.ok, "rtt_ms": stats.avg(),
            "rtt_min_ms": min(stats.rtts) if stats.rtts else None,
            "rtt_max_ms": max(stats.rtts) if stats.rtts else None,
            "loss_pct": _pct(stats.lost, stats.sent)}  # fmt: skip


def downsample(
    items: Sequence[tuple[float, MonitoringResult | None]], points: int, since: float,
    until: float,
) -> tuple[list[dict[str, Any]], float | None]:
    """Points of ``items`` (timestamp order), one per item or per time bucket; and the step.

    With more items than ``points``, the range from the first item (or ``since``, if later) to
    ``until`` is cut into ``points`` equal buckets and each non-empty bucket becomes a point.
    """
    if len(items) <= points:
        out = []
        for ts, result in items:
            stats = _Stats()
            stats.add(result)
            out.append(_point(ts, stats))
        return out, None
    lo = max(since, items[0][0])
    hi = max(until, items[-1][0])
    step = (hi - lo) / points if hi > lo else 1.0
    buckets: dict[int, _Stats] = {}
    for ts, result in items:
        i = min(points - 1, max(0, int((ts - lo) / step)))
        buckets.setdefault(i, _Stats()).add(result)
    return [_point(lo + i * step, buckets[i]) for i in sorted(buckets)], step


def answer_history(store: ResultSource, q: History, ctx: Context) -> dict[str, Any]:
    """One series over a time range, oldest first, at most ``q.points`` points."""
    until = ctx.now if q.until is None else q.until
    records = store.query(check=q.check, target=q.target, since=q.since, until=until,
                          limit=HISTORY_RECORDS + 1)  # newest first  # fmt: skip
    cut = len(records) > HISTORY_RECORDS
    records = records[:HISTORY_RECORDS]
    first = store.query(check=q.check, target=q.target, limit=1, order="oldest")
    items = sorted(((r.ts, _decode(r)[0]) for r in records), key=lambda item: item[0])
    points, step = downsample(items, q.points, q.since, until)
    return {"points": points, "downsampled": step is not None, "step_s": step,
            "records": len(records), "oldest": first[0].ts if first else None,
            "truncated": cut}  # fmt: skip


def answer(store: ResultSource, question: Question, ctx: Context) -> dict[str, Any]:
    """This agent's answer to ``question`` (not yet fitted to a size)."""
    if isinstance(question, Latest):
        return answer_latest(store, question)
    if isinstance(question, Matrix):
        return answer_matrix(store, question, ctx)
    return answer_history(store, question, ctx)


LIST_KEY = {Latest.KIND: "results", Matrix.KIND: "rows", History.KIND: "points"}
"""The list an answer of each question carries."""
_KEEP_NEWEST_FIRST = {Latest.KIND: True, Matrix.KIND: True, History.KIND: False}
"""Whether the kept items are at the start (newest first) or the end (oldest first)."""


def fit(kind: str, data: dict[str, Any], max_bytes: int) -> bytes:
    """The encoded answer, at most ``max_bytes``: items dropped (oldest first) if needed.

    Raises:
        ValueError: even with no items the answer does not fit (``max_bytes`` far too small).
    """
    body = encode_answer(data)
    if len(body) <= max_bytes:
        return body
    key = LIST_KEY[kind]
    items = data[key]

    def cut(n: int) -> bytes:
        kept = items[:n] if _KEEP_NEWEST_FIRST[kind] else items[len(items) - n:]
        return encode_answer({**data, key: kept, "truncated": True})

    lo, hi = 0, len(items)  # cut(lo) fits (checked below), cut(hi) does not
    best = cut(0)
    if len(best) > max_bytes:
        raise ValueError(f"an empty {kind} answer needs {len(best)} bytes, over {max_bytes}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        body = cut(mid)
        if len(body) <= max_bytes:
            lo, best = mid, body
        else:
            hi = mid
    return best


_ITEM_KEYS = {
    Latest.KIND: frozenset({"check", "target", "timestamp", "seq", "kind", "success",
                            "response_time_ms", "loss_pct", "jitter_ms", "error", "degraded",
                            "result"}),
    Matrix.KIND: frozenset({"check", "target", "samples", "loss_pct", "rtt_median_ms",
                            "rtt_avg_ms", "last", "last_success"}),
    History.KIND: frozenset({"t", "n", "ok", "rtt_ms", "rtt_min_ms", "rtt_max_ms", "loss_pct"}),
}  # fmt: skip
_SCALAR = (str, int, float, bool, type(None))


def check_answer(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """A peer's answer, checked to have the shape of ``kind`` (see :mod:`meshmon.query`).

    Unknown keys, of the answer or of its items, are dropped (a newer peer may add some);
    items must be maps whose known keys hold plain values (``result`` a map).

    Raises:
        QueryFormatError: naming what is wrong.
    """
    key = LIST_KEY[kind]
    items = data.get(key)
    if not isinstance(items, list):
        raise QueryFormatError(f"a {kind} answer needs a {key!r} list")
    allowed = _ITEM_KEYS[kind]
    kept = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise QueryFormatError(f"{key}[{i}] is not a map")
        row = {k: v for k, v in item.items() if k in allowed}
        for k, v in row.items():
            if not (isinstance(v, _SCALAR) or (k == "result" and isinstance(v, dict))):
                raise QueryFormatError(f"{key}[{i}].{k} is not a plain value")
        kept.append(row)
    out: dict[str, Any] = {key: kept}
    out.update((k, v) for k, v in data.items() if k != key and isinstance(v, _SCALAR))
    out["truncated"] = data.get("truncated") is True
    return out

