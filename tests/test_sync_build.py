"""Stored records → version 2 columns: the fast road reads ping results in place and must say
exactly what the slow road (``cbor2`` and the model's rules) says, for every shape of record."""

from __future__ import annotations

import math

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from meshmon import results as r
from meshmon.results.encoded import ping_result
from meshmon.results.summary import summarize
from meshmon.store import StoredColumns
from meshmon.sync.build import RecordReader, result_bytes
from meshmon.wire.columns import INCIDENT, UNREADABLE, Outcome
from meshmon.wire.ingest import INCIDENT_CHECK, SyncRecord
from tests.batches import records, stored_columns, summary_of

AGENT = "agent-7"
rtts = st.floats(min_value=0.001, max_value=5000.0, allow_nan=False)
names = st.text(min_size=1, max_size=300).filter(lambda s: "\x00" not in s)


@st.composite
def pings(draw: st.DrawFn) -> r.Ping:
    """Ping results of every shape the model allows, from this agent or under another name."""
    sent = draw(st.integers(0, 30))
    got = draw(st.integers(0, sent))
    latencies = tuple(draw(st.lists(rtts, min_size=got, max_size=got)))
    errors = tuple(draw(st.lists(st.sampled_from(["host unreachable", "ttl exceeded"]),
                                 max_size=2, unique=True)))  # fmt: skip
    avg = sum(latencies) / got if got else None
    result = r.PingResult(got, sent - got, latencies, errors, avg,
                          draw(st.none() | st.sampled_from(["10.0.0.1", "fd00::1"])))
    return r.Ping(agent=draw(st.sampled_from([AGENT, "other-agent"])),
                  check=draw(st.sampled_from(["ping", "ping-wan"]) | names),
                  target=draw(st.sampled_from(["10.0.0.1"]) | names),
                  family=draw(st.sampled_from([4, 6, None])), started_at=draw(rtts) + 1.7e9,
                  duration_ms=draw(rtts), seq=draw(st.none() | st.integers(0, 2**40)),
                  result=result)  # fmt: skip


def expected(payload: bytes) -> tuple[Outcome, float | None]:
    kind, success, rtt, loss, error = summarize(payload)
    return Outcome(kind, success, loss, error), rtt


def check(recs: list[SyncRecord], reader: RecordReader | None = None,
          summaries: bool = False) -> RecordReader:  # fmt: skip
    """Every record's columns say what the slow road says; returns the reader used."""
    reader = reader or RecordReader(AGENT)
    cols = reader.columns(stored_columns(recs, degraded=True, summaries=summaries))
    ends = [0]
    for n in cols["payload_len"]:
        ends.append(ends[-1] + n)
    assert len(ends) == len(recs) + 1
    starts = cols["payload_at"]  # read from the stored values, in place
    if starts is None:  # back to back
        assert ends[-1] == len(cols["payloads"])
        starts = ends[:-1]
    for i, rec in enumerate(recs):
        at = starts[i]
        assert cols["payloads"][at : at + cols["payload_len"][i]] == rec.payload
        assert cols["series"][cols["series_ix"][i]] == (rec.check, rec.target)
        assert cols["ts_us"][i] == round(rec.ts * 1e6)
        outcome, rtt = expected(rec.payload)
        assert cols["outcomes"][cols["outcome_ix"][i]] == outcome
        got = cols["rtt_ms"][i]
        assert math.isnan(got) if rtt is None else got == rtt
    return reader


def as_record(seq: int, result: r.MonitoringResult) -> SyncRecord:
    return SyncRecord(seq, result.started_at, result.check, result.target,
                      r.encode_result(result))


@settings(max_examples=300, deadline=None)
@given(st.lists(pings(), min_size=1, max_size=20))
def test_ping_results_read_in_place_say_what_the_model_says(results: list[r.Ping]) -> None:
    check([as_record(i + 1, p) for i, p in enumerate(results)])


@settings(max_examples=300, deadline=None)
@given(st.lists(pings(), min_size=1, max_size=20))
def test_ping_results_stored_with_their_summaries_say_what_the_model_says(
        results: list[r.Ping]) -> None:  # fmt: skip
    recs = [as_record(i + 1, p) for i, p in enumerate(results)]
    reader = check(recs, summaries=True)
    words = [summary_of(rec.payload)[0] for rec in recs]
    sizes = {len(rec.payload) >= 256 for rec in recs}  # the data's bytes head: one form a run
    if all(words) and len(sizes) == 1:
        assert reader.summarized_reads == len(recs)  # the whole run, from its summaries
    else:
        assert reader.summarized_reads == 0  # the run is read record by record


def test_the_agents_ping_path_stores_summaries_an_upload_reads_as_columns() -> None:
    bursts = [(0.25,), (None,), (1.5, None, 2.5), (None, None), (0.1,) * 4, (3.0, 4.0)]
    made = [ping_result(AGENT, "ping", f"10.0.0.{i}", 4 if i % 2 else 6, 1.7e9 + i, 2.0,
                        "10.0.0.1", bursts[i % len(bursts)]) for i in range(60)]  # fmt: skip
    assert all(one.summary for one in made)
    assert ping_result(AGENT, "ping", "t", 4, 1.7e9, 2.0, None, (None,),
                       ("host unreachable",)).summary == 0  # errors: read as before
    recs = [SyncRecord(i + 1, one.started_at, one.check, f"10.0.0.{i}", one.data)
            for i, one in enumerate(made)]  # fmt: skip
    reader = check(recs, summaries=True)
    assert reader.summarized_reads == 60 and reader.slow_reads == 0
    large = [ping_result(AGENT, "ping", "t", 4, 1.7e9, 2.0, "10.0.0.1", (0.1,) * 20 + (None,))
             for _ in range(3)]  # fmt: skip
    assert all(len(one.data) > 255 for one in large)  # a data head of 3 bytes, not 2
    reader = check([SyncRecord(i + 1, 1.7e9, "ping", "t", one.data)
                    for i, one in enumerate(large)], summaries=True)  # fmt: skip
    assert reader.summarized_reads == 3
    tcp = records(AGENT, 61, 2, 1.7e9)[1:]  # a TCP result: no summary
    reader = check([*recs, *tcp], summaries=True)  # a mixed run, record by record
    assert reader.summarized_reads == 0 and reader.slow_reads == 1


def test_a_summary_beside_a_value_of_another_layout_is_not_used() -> None:
    one = ping_result(AGENT, "ping", "10.0.0.1", 4, 1.7e9, 2.0, "10.0.0.1", (1.5, None))
    good, summary = one.stored(False)
    assert summary == (one.summary, 1.5)
    for bad in (one.data, b"\x83" + good[1:] + b"\x00", b"\x82\x41" + good[3:]):
        out = StoredColumns(1)
        out.names[0] = ("ping", "10.0.0.1")
        for seq, payload in enumerate((good, bad)):
            out.tss.append(1.7e9 + seq)
            out.gids.append(0)
            out.payloads += payload
            out.plens.append(len(payload))
            out.words.append(summary[0])
            out.rtts.append(summary[1])
        reader = RecordReader(AGENT)
        cols = reader.columns(out)
        assert reader.summarized_reads == 0, bad
        assert cols["outcomes"][cols["outcome_ix"][0]] == Outcome("ping", True, 0.5, None)
        assert cols["rtt_ms"][0] == 1.5


def test_the_agents_own_pings_take_the_fast_road_and_others_the_slow_one() -> None:
    own = [r.Ping(agent=AGENT, check="ping", target=f"10.0.0.{i}", family=4,
                  started_at=1.7e9 + i, duration_ms=2.0,
                  result=r.PingResult(i % 4, 3 - i % 4, (1.5,) * (i % 4), (),
                                      1.5 if i % 4 else None, "10.0.0.1"))
           for i in range(40)]  # fmt: skip
    reader = check([as_record(i + 1, p) for i, p in enumerate(own)])
    assert reader.slow_reads == 0
    mixed = records(AGENT, 1, 30, 1.7e9)  # pings (seq set: not what a store holds) and TCP
    reader = check(mixed)
    assert reader.slow_reads == 30


def test_records_that_are_no_results_go_as_stored() -> None:
    incident = cbor2.dumps({"id": "i1", "event": "opened"})
    recs = [SyncRecord(1, 1.7e9, INCIDENT_CHECK, "rule-1", incident),
            SyncRecord(2, 1.7e9, "ping", "10.0.0.1", b"\x82\x02not a result")]  # fmt: skip
    cols = RecordReader(AGENT).columns(stored_columns(recs))
    assert cols["payloads"] == incident + recs[1].payload
    assert cols["outcomes"][cols["outcome_ix"][0]] == INCIDENT
    unreadable = cols["outcomes"][cols["outcome_ix"][1]]
    assert unreadable.kind == UNREADABLE and not unreadable.success
    assert unreadable.error is not None and unreadable.error.startswith("unreadable result: ")
    assert math.isnan(cols["rtt_ms"][1])


def test_a_stored_payload_that_is_not_wrapped_travels_as_it_is() -> None:
    payload = r.encode_result(r.Ping(agent=AGENT, check="ping", target="t", family=4,
                                     started_at=1.7e9, duration_ms=1.0,
                                     result=r.PingResult(1, 0, (2.0,), (), 2.0, "t")))
    assert result_bytes(cbor2.dumps([payload, True])) == payload
    out = StoredColumns(5)
    out.names[0] = ("ping", "t")
    out.tss.append(1.7e9)
    out.gids.append(0)
    out.payloads += payload  # stored bare, as no agent writes it: read the slow way
    out.plens.append(len(payload))
    reader = RecordReader(AGENT)
    cols = reader.columns(out)
    assert cols["payloads"] == payload and reader.slow_reads == 1
    assert cols["outcomes"] == (Outcome("ping", True, 0.0, None),) and cols["rtt_ms"][0] == 2.0
