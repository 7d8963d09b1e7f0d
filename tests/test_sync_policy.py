"""The uploader's pure parts: batching, backoff, resync and URL choice as tables; aggregator
URLs in config and in gossip metadata; the ``[sync]`` section; the status lines."""

from __future__ import annotations

import random
from pathlib import Path

import cbor2
import pytest

from meshmon.cli.ops import sync_lines
from meshmon.config import load_config
from meshmon.configload import ConfigError
from meshmon.membership import codec
from meshmon.membership.messages import Alive, NodeMeta, State
from meshmon.sync.build import result_bytes
from meshmon.sync.policy import (
    AggregatorUrls,
    Resync,
    UrlChooser,
    backoff_delay,
    contiguous,
    due_at,
    resync,
)
from meshmon.wire import urls


@pytest.mark.parametrize("failures, low, high, ceiling", [
    (0, 1.0, 60.0, 0.0), (1, 1.0, 60.0, 1.0), (2, 1.0, 60.0, 2.0), (4, 1.0, 60.0, 8.0),
    (7, 1.0, 60.0, 60.0), (1000, 1.0, 60.0, 60.0), (3, 0.5, 1.0, 1.0),
])  # fmt: skip
def test_backoff_is_full_jitter_below_a_doubling_capped_ceiling(
        failures: int, low: float, high: float, ceiling: float) -> None:  # fmt: skip
    rng = random.Random(7)
    draws = [backoff_delay(failures, low, high, rng) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in draws)
    if ceiling:  # spread over the whole range, not bunched at the ceiling
        assert min(draws) < ceiling * 0.05 and max(draws) > ceiling * 0.95


@pytest.mark.parametrize("pending, age, seen_ago, expected", [
    (0, 0.0, 0.0, None),        # nothing waits
    (100, 0.0, 0.0, 0.0),       # a full batch leaves at once
    (250, 0.0, 0.0, 0.0),
    (5, 0.0, 0.0, 10.0),        # a fresh record waits max_delay
    (5, 4.0, 4.0, 6.0),         # ...less what it waited already
    (5, 3600.0, 0.0, 0.0),      # appended before a restart: due now
    (5, -50.0, 2.0, 8.0),       # a clock set back: the monotonic bound holds
    (5, 0.0, 12.0, -2.0),       # overdue
])  # fmt: skip
def test_a_batch_is_due_when_full_or_when_its_oldest_waited_max_delay(
        pending: int, age: float, seen_ago: float, expected: float | None) -> None:  # fmt: skip
    now = 1000.0
    due = due_at(pending, 100, 10.0, now, now - seen_ago, age)
    assert (due if due is None else due - now) == expected


@pytest.mark.parametrize("expected, durable, oldest, plan", [
    (31, 50, 1, Resync(30, 31, False)),      # it has up to 30: resume at 31
    (1, 50, 1, Resync(0, 1, False)),         # its database is empty: everything again
    (1, 50, 20, Resync(0, 20, False)),       # ...what the ring still holds; 1-19 declared lost
    (41, 50, 45, Resync(40, 45, False)),
    (60, 50, 1, Resync(50, 51, True)),       # it claims more than this store ever held
    (1, 0, None, Resync(0, 1, False)),       # an empty store
    (5, 9, None, Resync(4, 10, False)),      # records 5-9 were all overwritten
])  # fmt: skip
def test_resync_resumes_where_the_aggregator_says(expected: int, durable: int,
                                                  oldest: int | None, plan: Resync) -> None:
    assert resync(expected, durable, oldest) == plan


@pytest.mark.parametrize("seqs, n", [
    ([], 0), ([4], 1), ([4, 5, 6], 3), ([4, 5, 7, 8], 2), ([4, 6], 1),
])  # fmt: skip
def test_contiguous_prefix(seqs: list[int], n: int) -> None:
    assert contiguous(seqs) == n


def test_url_chooser_takes_the_first_that_answers_and_sticks_to_it() -> None:
    a, b, c = "https://a", "https://b", "https://c"
    chooser = UrlChooser()
    assert chooser.pick([a, b, c]) == a
    assert chooser.failed([a, b, c]) is False and chooser.pick([a, b, c]) == b  # fail over
    chooser.worked()
    assert chooser.pick([a, b, c]) == b  # sticky while it works
    assert chooser.failed([a, b, c]) is False and chooser.pick([a, b, c]) == a
    assert chooser.failed([a, b, c]) is False and chooser.pick([a, b, c]) == c
    assert chooser.failed([a, b, c]) is True  # every URL failed: back off...
    assert chooser.pick([a, b, c]) == a  # ...then start again from the first
    assert chooser.pick([c]) == c  # its URL vanished from the list
    assert chooser.pick([]) is None


def test_learnt_urls_follow_the_configured_ones_and_survive_a_quiet_spell() -> None:
    book = AggregatorUrls(("https://conf",), learn=True)
    assert book.update([("n2", ("https://x", "https://conf")), ("n1", ("https://x",))])
    assert book.all() == ("https://conf", "https://x")
    assert book.learnt == {"https://x": ("n1", "n2")}
    assert not book.update([])  # the advertisers are away: keep what was learnt
    assert book.all() == ("https://conf", "https://x")
    assert book.update([("n3", ("https://y",))])
    assert book.all() == ("https://conf", "https://y")
    deaf = AggregatorUrls((), learn=False)
    assert not deaf.update([("n1", ("https://x",))]) and deaf.all() == ()


# --- aggregator URLs ------------------------------------------------------------------------


@pytest.mark.parametrize("text, words", [
    ("", "empty"), ("http://10.0.0.1", "must be https"), ("ftp://x", "must be https"),
    ("https://", "no host"), ("https://u:p@10.0.0.1", "user name"),
    ("https://10.0.0.1/?a=1", "query"), ("https://10.0.0.1#x", "fragment"),
    ("https://10.0.0.1:99999", "not a URL"), ("https://10.0.0.1:0", "port 0"),
    ("https://300.0.0.1", "not a valid IPv4"), ("https://-x-.example", "not a valid host"),
    ("https://a b", "spaces"), ("https://é.example", "non-ASCII"),
])  # fmt: skip
def test_url_problems_are_named(text: str, words: str) -> None:
    problem = urls.url_problem(text)
    assert problem is not None and words in problem


@pytest.mark.parametrize("text, normal", [
    ("https://10.0.0.1:7950", "https://10.0.0.1:7950"),
    ("HTTPS://Agg.Example.:443/", "https://agg.example.:443"),
    ("https://[fd00::1]:8443/meshmon/", "https://[fd00::1]:8443/meshmon"),
])  # fmt: skip
def test_urls_are_normalised_and_ingest_is_below_their_prefix(text: str, normal: str) -> None:
    assert urls.url_problem(text) is None
    assert urls.normalize(text) == normal
    assert urls.ingest_url(normal) == normal + "/v1/ingest"


META = NodeMeta("node-1", "10.0.0.1", 7946, 7946, ("dc1",), "0.1.0", b"\x01" * 32, 0)


def test_metadata_carries_aggregator_urls_and_the_statement_covers_them() -> None:
    with_urls = NodeMeta(**{**{f: getattr(META, f) for f in META.__slots__},  # type: ignore[arg-type]
                            "sync_urls": ("https://10.0.0.9:7950", "https://agg.example")})
    for meta in (META, with_urls):
        assert codec.decode_datagram(codec.encode_datagram([Alive(1, meta, b"p")])) == [
            Alive(1, meta, b"p")]
    plain = cbor2.loads(codec.encode_message(Alive(1, META)))
    assert len(plain[2]) == 8  # no URLs, no ninth item: the encoding of earlier metadata
    assert (codec.encode_statement(State.ALIVE, 1, META)
            != codec.encode_statement(State.ALIVE, 1, with_urls))  # signed with the rest


@pytest.mark.parametrize("ninth, words", [
    ([], "1-4 expected"), (["https://a"] * 5, "1-4 expected"), ("https://a", "expected an array"),
    (["http://10.0.0.1"], "must be https"), (["https://" + "a" * 130], "longer than 128"),
    ([7], "not text"),
])  # fmt: skip
def test_bad_urls_in_metadata_are_refused(ninth: object, words: str) -> None:
    raw = [codec.VERSION, [4, 1, [*codec._meta_list(META), ninth], b""]]
    with pytest.raises(codec.MalformedMessage, match=words):
        codec.decode_datagram(cbor2.dumps(raw))


@pytest.mark.parametrize("stored, sent", [
    (cbor2.dumps([b"\x82\x02result", False]), b"\x82\x02result"),  # the agent's results
    (cbor2.dumps([b"\x82\x02result", True]), b"\x82\x02result"),
    (cbor2.dumps({"other": 1}), cbor2.dumps({"other": 1})),  # anything else goes as it is
    (b"\xff\x00", b"\xff\x00"),
])  # fmt: skip
def test_records_travel_as_the_encoded_result(stored: bytes, sent: bytes) -> None:
    assert result_bytes(stored) == sent


# --- [sync] ---------------------------------------------------------------------------------

BASE = '[node]\nname = "n1"\n[listen]\naddress = "127.0.0.2"\n'


def test_sync_defaults_keep_the_agent_serverless(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(BASE)
    sync = load_config(tmp_path / "a.toml").sync
    assert sync.all_urls == () and sync.advertise and sync.learn
    assert (sync.batch_size, sync.max_delay, sync.backoff_min, sync.backoff_max) == (
        5000, 10.0, 1.0, 60.0)


def test_sync_url_and_urls_merge_in_order_without_repeats(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(BASE + '[sync]\nurl = "https://10.0.0.5:7950/"\n'
                                     'urls = ["https://10.0.0.6:7950", "https://10.0.0.5:7950"]\n'
                                     'max_delay = "2s"\nbatch_size = 100\n')  # fmt: skip
    sync = load_config(tmp_path / "a.toml").sync
    assert sync.all_urls == ("https://10.0.0.5:7950", "https://10.0.0.6:7950")
    assert (sync.max_delay, sync.batch_size) == (2.0, 100)


@pytest.mark.parametrize("body, key, words", [
    ('urls = ["http://10.0.0.1"]', "sync.urls[0]", "must be https"),
    ('url = "10.0.0.1:7950"', "sync.url", "must be https"),
    ('urls = "https://10.0.0.1"', "sync.urls", "expected a list"),
    ("batch_size = 0", "sync.batch_size", "1-50000"),
    ("batch_size = 60000", "sync.batch_size", "1-50000"),
    ('max_delay = "0s"', "sync.max_delay", "greater than zero"),
    ('backoff_min = "5s"\nbackoff_max = "1s"', "sync.backoff_max", "at least backoff_min"),
    ('urls = ["https://a1", "https://a2", "https://a3", "https://a4", "https://a5"]',
     "sync.urls", "advertise"),
    (f'urls = ["https://{"a" * 60}.{"b" * 60}.example"]', "sync.urls[0]", "advertise = false"),
    ("interval = 5", "sync.interval", "unknown key"),
])  # fmt: skip
def test_sync_errors_name_the_key(tmp_path: Path, body: str, key: str, words: str) -> None:
    (tmp_path / "a.toml").write_text(BASE + "[sync]\n" + body + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "a.toml")
    assert info.value.key == key and words in str(info.value), str(info.value)


def test_long_or_many_urls_are_fine_when_not_advertised(tmp_path: Path) -> None:
    many = ", ".join(f'"https://a{i}.example"' for i in range(6))
    (tmp_path / "a.toml").write_text(BASE + f"[sync]\nadvertise = false\nurls = [{many}]\n")
    assert len(load_config(tmp_path / "a.toml").sync.all_urls) == 6


# --- status lines ---------------------------------------------------------------------------


def test_status_lines_show_where_how_far_behind_what_was_lost_and_why() -> None:
    assert sync_lines({"state": "off", "reason": "no aggregator URL"}) == [
        "sync: off (no aggregator URL)"]
    lines = sync_lines({"state": "backoff", "url": "https://10.0.0.5:7950", "aggregator": "agg1",
                        "behind": 1200, "cursor": 301, "lost": 42, "last_success": None,
                        "last_error": "https://10.0.0.5:7950: cannot connect: refused",
                        "last_error_at": 1.0, "backoff_s": 3.5, "failures": 4})  # fmt: skip
    assert "1200 results behind" in lines[0] and "42 lost" in lines[0]
    assert "(aggregator agg1)" in lines[0] and "cannot connect" in lines[1]
    assert "retrying in 3.5s (4 failed round(s))" in lines[2]
