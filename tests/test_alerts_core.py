"""The alert cores without I/O: rules, one prober's evaluator, quorum, incidents and hand-over."""

from __future__ import annotations

import pytest

from meshmon.alerts import (
    AlertRule,
    Digest,
    Evaluator,
    EvaluatorConfig,
    IncidentBook,
    Observation,
    VerdictBoard,
    majority,
    needed_votes,
)
from meshmon.alerts.evaluate import percentile
from meshmon.config import config_from_dict
from meshmon.configload import ConfigErrors, FieldError, decode

# --- rules ----------------------------------------------------------------------------------


def test_rule_defaults_and_hysteresis() -> None:
    r = AlertRule(name="lossy", condition="loss")
    assert (r.fire, r.resolve, r.resolve_for) == (50.0, 10.0, 30.0)
    assert r.breached(50) and not r.breached(49.9)
    assert r.cleared(10) and not r.cleared(10.1)
    tls = AlertRule(name="cert", condition="tls_expiry")
    assert tls.breached(14) and not tls.breached(15) and tls.cleared(21)
    assert AlertRule(name="slow", condition="rtt", fire=100).resolve == 80


@pytest.mark.parametrize(("kwargs", "key", "words"), [
    ({"condition": "rtt"}, "fire", "needs a firing threshold"),
    ({"condition": "loss", "fire": 20, "resolve": 30}, "resolve", "below fire"),
    ({"condition": "tls_expiry", "fire": 14, "resolve": 7}, "resolve", "above fire"),
    ({"condition": "loss", "fire": 150}, "fire", "percentage"),
    ({"condition": "rtt", "fire": 10, "percentile": 0}, "percentile", "(0, 100]"),
])  # fmt: skip
def test_rule_errors_name_the_key(kwargs: dict, key: str, words: str) -> None:
    with pytest.raises(FieldError) as err:
        AlertRule(name="r", **kwargs)
    assert err.value.field == key and words in err.value.problem


def test_rules_in_agent_config(tmp_path) -> None:
    rules = [{"name": "down", "condition": "loss", "check": "ping-*", "for": "10s",
              "labels": {"team": "net"}}]  # fmt: skip
    base = {"listen": {"address": "127.0.0.2"}}
    cfg = config_from_dict({**base, "alerts": {"rules": rules}}, tmp_path)
    (rule,) = cfg.alerts.rules
    assert rule.for_ == 10.0 and rule.resolve_for == 10.0 and rule.labels == {"team": "net"}
    with pytest.raises(ConfigErrors) as err:
        config_from_dict({**base, "alerts": {"rules": [{"name": "x", "condition": "loss",
                                                         "fire": 5, "resolve": 9}]}}, tmp_path)
    assert "alerts.rules[0].resolve" in str(err.value)
    with pytest.raises(ConfigErrors) as err:
        config_from_dict({**base, "alerts": {"rules": [{"name": "x", "condition": "lost"}]}},
                         tmp_path)
    assert "alerts.rules[0].condition" in str(err.value) and "'loss'" in str(err.value)


def test_keyword_keys_decode(tmp_path) -> None:
    rule = decode(AlertRule, {"name": "r", "condition": "failures", "for": 0}, "x.toml", tmp_path)
    assert rule.for_ == 0


def test_selects() -> None:
    r = AlertRule(name="r", condition="loss", check="ping-*", targets=("10.0.*",), tags=("web",))
    assert r.selects("ping-lan", "10.0.0.1", ("web",))
    assert not r.selects("http-lan", "10.0.0.1", ("web",))
    assert not r.selects("ping-lan", "10.1.0.1", ("web",))
    assert not r.selects("ping-lan", "10.0.0.1", ("db",))


@pytest.mark.parametrize(("values", "pct", "expected"), [
    ([1.0], 95, 1.0), ([1.0, 2.0, 3.0, 4.0], 50, 2.0), ([1.0, 2.0, 3.0, 4.0], 95, 4.0),
    (list(map(float, range(1, 101))), 99, 99.0),
])  # fmt: skip
def test_percentile(values: list[float], pct: float, expected: float) -> None:
    assert percentile(values, pct) == expected


# --- one prober -------------------------------------------------------------------------------


def feed(ev: Evaluator, t: float, target: str, ok: bool, loss: float | None = None,
         rtt: float | None = 1.0, check: str = "ping") -> None:  # fmt: skip
    ev.observe(Observation(t, check, target, ok, rtt if ok else None,
                           loss if loss is not None else (0.0 if ok else 100.0), "ping"))


def test_blip_does_not_fire_but_an_outage_does() -> None:
    rule = AlertRule(name="down", condition="failures", fire=3, for_=20)
    ev = Evaluator((rule,))
    key = ("down", "ping", "t1")
    t = 0.0
    for ok in (True, False, False, True):  # a two-probe blip
        feed(ev, t, "t1", ok)
        ev.step(t)
        t += 10
    assert ev.state_of(key) == "ok"
    states = []
    for _ in range(6):
        feed(ev, t, "t1", False)
        ev.step(t)
        states.append(ev.state_of(key))
        t += 10
    assert states == ["ok", "ok", "pending", "pending", "firing", "firing"]
    assert list(ev.failing()) == [key]


@pytest.mark.parametrize(("losses", "final"), [
    ([60, 60, 60, 60], "firing"),           # breached for >= for
    ([60, 60, 60, 30, 30, 30], "firing"),   # between the thresholds: no change once firing
    ([60, 60, 60, 60, 0, 0, 0, 0, 0, 0, 0, 0], "ok"),  # cleared long enough
    ([60, 0, 60, 0, 60, 0], "ok"),          # never breached for 'for' (window means hover 30)
])  # fmt: skip
def test_loss_hysteresis(losses: list[float], final: str) -> None:
    rule = AlertRule(name="loss", condition="loss", window=10, fire=50, resolve=10, for_=15,
                     resolve_for=15)
    ev = Evaluator((rule,))
    for i, loss in enumerate(losses):
        feed(ev, i * 10.0, "t", loss < 100, loss=loss)
        ev.step(i * 10.0)
    assert ev.state_of(("loss", "ping", "t")) == final


def test_flapping_target_stays_one_firing() -> None:
    rule = AlertRule(name="loss", condition="loss", window=60, fire=40, resolve=10, for_=20)
    ev = Evaluator((rule,))
    firing_edges = 0
    for i in range(120):  # up/down every 10 s for 20 minutes
        t = i * 5.0
        feed(ev, t, "t", (i // 2) % 2 == 0)
        changes, _ = ev.step(t)
        firing_edges += sum(1 for c in changes if c.new == "firing" and c.old == "pending")
    assert firing_edges == 1


def test_rtt_percentile_rule() -> None:
    rule = AlertRule(name="slow", condition="rtt", fire=100, resolve=50, percentile=50, for_=0,
                     window=30)
    ev = Evaluator((rule,))
    for i, rtt in enumerate([10, 10, 200, 200, 200]):
        feed(ev, i * 10.0, "t", True, rtt=rtt)
        ev.step(i * 10.0)
    assert ev.state_of(("slow", "ping", "t")) == "firing"


def test_http_and_tls_rules_only_see_their_kind() -> None:
    http = AlertRule(name="web", condition="http", for_=0)
    tls = AlertRule(name="cert", condition="tls_expiry", for_=0)
    ev = Evaluator((http, tls))
    ev.observe(Observation(0, "site", "https://x", False, kind="http"))
    ev.observe(Observation(0, "ping", "x", False, kind="ping"))
    ev.observe(Observation(0, "certs", "x:443", True, kind="tls", tls_days=3))
    ev.step(0)
    assert ev.state_of(("web", "site", "https://x")) == "firing"
    assert ev.state_of(("web", "ping", "x")) is None
    assert ev.state_of(("cert", "certs", "x:443")) == "firing"


def test_a_prober_that_loses_its_link_is_impaired_not_alerting() -> None:
    rule = AlertRule(name="down", condition="failures", fire=2, for_=20)
    ev = Evaluator((rule,), EvaluatorConfig(impaired_fraction=0.5, impaired_min_targets=3))
    targets = [f"t{i}" for i in range(8)]
    events = []
    for step in range(12):
        t = step * 10.0
        ok = step < 4
        for target in targets:
            feed(ev, t, target, ok)
        _, vantage = ev.step(t)
        if vantage:
            events.append(vantage.impaired)
        assert ev.failing() == {}, "an impaired prober publishes no target verdict"
    assert events == [True]
    for step in range(12, 16):  # link back
        for target in targets:
            feed(ev, step * 10.0, target, True)
        _, vantage = ev.step(step * 10.0)
        if vantage:
            events.append(vantage.impaired)
    assert events == [True, False]


def test_a_few_failing_targets_are_not_a_vantage_problem() -> None:
    rule = AlertRule(name="down", condition="failures", fire=1, for_=0)
    ev = Evaluator((rule,))
    for step in range(3):
        for i in range(10):
            feed(ev, step * 10.0, f"t{i}", i >= 2)
        _, vantage = ev.step(step * 10.0)
        assert vantage is None
    assert set(ev.failing()) == {("down", "ping", "t0"), ("down", "ping", "t1")}


def test_stale_series_are_forgotten() -> None:
    ev = Evaluator((AlertRule(name="d", condition="failures", fire=1, for_=0),),
                   EvaluatorConfig(stale_after=60))
    feed(ev, 0, "t", False)
    ev.step(0)
    assert ev.failing()
    ev.step(61)
    assert not ev.failing() and ev.state_of(("d", "ping", "t")) is None


# --- quorum -----------------------------------------------------------------------------------

KEY = ("down", "ping", "t")


@pytest.mark.parametrize(("k", "quorum", "m"), [
    (1, None, 1), (2, None, 2), (3, None, 2), (4, None, 3), (5, None, 3),
    (3, 1, 1), (3, 5, 3), (0, None, 1),
])  # fmt: skip
def test_needed_votes(k: int, quorum: int | None, m: int) -> None:
    assert needed_votes(k, quorum) == m
    if quorum is None and k:
        assert majority(k) == m


@pytest.mark.parametrize(("votes", "impaired", "down"), [
    ({"a"}, set(), False),
    ({"a", "b"}, set(), True),
    ({"a", "b"}, {"b"}, False),        # an impaired prober's digest lists nothing
    ({"a", "x"}, set(), False),        # x is not assigned to the target: no vote
    ({"a", "b", "c"}, set(), True),
])  # fmt: skip
def test_quorum_decides(votes: set[str], impaired: set[str], down: bool) -> None:
    board = VerdictBoard()
    for i, p in enumerate(sorted(votes | impaired | {"a", "b", "c"})):
        failing = {KEY: 100.0 + i} if p in votes else {}
        board.update(Digest.build(p, 1, p in impaired, failing), now=0)
    decision = board.decide(KEY, ("a", "b", "c"), now=1)
    assert decision.down is down
    if down:
        assert decision.since == sorted(100.0 + i for i, p in
                                        enumerate(sorted(votes | impaired | {"a", "b", "c"}))
                                        if p in votes and p in "abc")[1]


def test_board_keeps_newest_and_expires() -> None:
    board = VerdictBoard(ttl=30)
    board.update(Digest.build("a", 2, False, {KEY: 1.0}), now=0)
    assert not board.update(Digest.build("a", 1, False, {}), now=1)  # older: ignored
    assert board.failing_keys(now=1) == {KEY}
    assert board.failing_keys(now=31) == set()  # not refreshed within ttl


def test_digest_is_bounded() -> None:
    failing = {("r", "c", f"t{i}"): float(i) for i in range(100)}
    d = Digest.build("a", 1, False, failing)
    assert len(d.failing) == 64 and d.omitted == 36 and d.failing[0][1] == 0.0


# --- incidents ------------------------------------------------------------------------------


def down_at(board: VerdictBoard, now: float) -> dict:
    return {k: board.decide(k, ("a", "b", "c"), now) for k in board.failing_keys(now)}


def test_one_notifier_fires_and_resolves_once() -> None:
    board = VerdictBoard()
    books = {n: IncidentBook(n) for n in "abc"}
    for p in "ab":
        board.update(Digest.build(p, 1, False, {KEY: 10.0}), now=0)
    sent = []
    for _ in range(3):  # repeated steps say nothing new
        for n, book in books.items():
            sent += [(n, x.event) for x in book.step_targets(1, down_at(board, 1),
                                                             owns=lambda k, n=n: n == "a")]
    assert sent == [("a", "firing")]
    for p in "ab":
        board.update(Digest.build(p, 2, False, {}), now=2)
    for n, book in books.items():
        sent += [(n, x.event) for x in book.step_targets(3, down_at(board, 3),
                                                         owns=lambda k, n=n: n == "a")]
    assert sent == [("a", "firing"), ("a", "resolved")]


def test_hand_over_neither_drops_nor_duplicates() -> None:
    board = VerdictBoard()
    for p in "bc":
        board.update(Digest.build(p, 1, False, {KEY: 10.0}), now=0)
    a, b = IncidentBook("a"), IncidentBook("b")
    (fired,) = a.step_targets(1, down_at(board, 1), owns=lambda k: True)
    a.delivered(fired.incident.id, "firing")
    b.merge(a.shared())  # gossip reached b before a died
    # a dies: b is now the owner; the target is still down
    assert b.step_targets(2, down_at(board, 2), owns=lambda k: True) == []
    assert b.open_for("target", KEY).notifier == "b"
    for p in "bc":
        board.update(Digest.build(p, 2, False, {}), now=3)
    (resolved,) = b.step_targets(4, down_at(board, 4), owns=lambda k: True)
    assert resolved.event == "resolved" and resolved.incident.id == fired.incident.id


def test_hand_over_before_delivery_fires_once_with_the_same_id() -> None:
    board = VerdictBoard()
    for p in "bc":
        board.update(Digest.build(p, 1, False, {KEY: 10.0}), now=0)
    a, b = IncidentBook("a"), IncidentBook("b")
    (queued,) = a.step_targets(1, down_at(board, 1), owns=lambda k: True)
    b.merge(a.shared())  # a's record says: firing not delivered yet
    (fired,) = b.step_targets(2, down_at(board, 2), owns=lambda k: True)
    assert fired.event == "firing" and fired.incident.id == queued.incident.id


def test_two_owners_during_churn_announce_the_same_incident() -> None:
    board = VerdictBoard()
    for p in "abc":
        board.update(Digest.build(p, 1, False, {KEY: 10.0 + ord(p)}), now=0)
    ids = {book.step_targets(1, down_at(board, 1), owns=lambda k: True)[0].incident.id
           for book in (IncidentBook("a"), IncidentBook("b"))}
    assert len(ids) == 1


def test_vantage_incident_is_the_probers_own() -> None:
    book = IncidentBook("a")
    (fired,) = book.step_vantage(5, impaired=True, since=5)
    assert fired.incident.kind == "vantage" and fired.incident.key == ("vantage", "", "a")
    assert book.step_vantage(6, impaired=True, since=5) == []
    (resolved,) = book.step_vantage(9, impaired=False, since=5)
    assert resolved.event == "resolved"


def test_merge_keeps_delivery_flags() -> None:
    a = IncidentBook("a")
    board = VerdictBoard()
    for p in "ab":
        board.update(Digest.build(p, 1, False, {KEY: 1.0}), now=0)
    (n,) = a.step_targets(1, down_at(board, 1), owns=lambda k: True)
    delivered = a.delivered(n.incident.id, "firing")
    a.merge([n.incident])  # an older copy arriving late
    assert a.incidents[n.incident.id] == delivered
