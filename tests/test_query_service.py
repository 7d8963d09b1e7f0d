"""The query service over the in-memory transport: who may ask, and what an outcome says.

The real mTLS path is covered by ``test_query_mesh.py`` with agent processes; here the
membership gate, the bookkeeping of failures and the envelope are checked deterministically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import cbor2
import pytest
import trio

from meshmon.net import MemoryNetwork, MemoryTransport
from meshmon.pki import PeerIdentity
from meshmon.query import KIND, History, Latest, Matrix, Peer, QueryConfig, QueryService, Question
from meshmon.query.wire import MIN_ANSWER_BYTES, AnswerError, decode_answer, encode_answer

FOREVER = dt.datetime.max.replace(tzinfo=dt.UTC)


class Node:
    """One agent: a transport, a view (shared dict) and a canned answer."""

    def __init__(self, net: MemoryNetwork, name: str, host: int, views: dict[str, list[Peer]],
                 rows: int = 1, config: QueryConfig | None = None) -> None:  # fmt: skip
        self.name = name
        self.addr = (f"127.0.0.{host}", 7946)
        self.transport: MemoryTransport = net.transport(name, self.addr)
        self.transport.identity = PeerIdentity(name, (), host, f"fp-{name}", FOREVER)
        self.views = views
        self.rows = rows
        self.asked: list[Question] = []
        self.service = QueryService(self.transport, lambda: self.views[self.name], self.answer,
                                    config=config)  # fmt: skip
        self.service.install()

    def peer(self, state: str = "alive", tags: tuple[str, ...] = ()) -> Peer:
        return Peer(self.name, self.addr, state, tags, f"fp-{self.name}")

    def answer(self, question: Question, peers: Sequence[Peer]) -> dict[str, Any]:
        self.asked.append(question)
        key = {"latest": "results", "matrix": "rows", "history": "points"}[question.KIND]
        return {key: [{"check": "c", "target": f"t{i}"} if key != "points" else {"t": float(i)}
                      for i in range(self.rows)], "truncated": False}  # fmt: skip


def mesh(n: int, **kw: Any) -> tuple[MemoryNetwork, list[Node], dict[str, list[Peer]]]:
    net = MemoryNetwork()
    views: dict[str, list[Peer]] = {}
    nodes = [Node(net, f"n{i}", i + 2, views, **kw) for i in range(n)]
    for node in nodes:
        views[node.name] = [other.peer() for other in nodes]
    return net, nodes, views


async def test_everyone_answers_including_the_asker() -> None:
    _, nodes, _ = mesh(4)
    outcome = await nodes[0].service.ask(Latest())
    assert outcome.asked == ["n0", "n1", "n2", "n3"]
    assert sorted(outcome.answers) == ["n0", "n1", "n2", "n3"]
    assert outcome.missing == {} and not outcome.partial
    assert outcome.answers["n2"] == {"results": [{"check": "c", "target": "t0"}],
                                     "truncated": False}  # fmt: skip
    assert all(node.asked == [Latest()] for node in nodes)


async def test_dead_members_are_not_asked_and_a_matrix_asks_the_tag() -> None:
    _, nodes, views = mesh(4)
    views["n0"] = [nodes[0].peer(tags=("dc1",)), nodes[1].peer(tags=("dc1",)),
                   nodes[2].peer("dead", ("dc1",)), nodes[3].peer()]  # fmt: skip
    assert (await nodes[0].service.ask(Latest())).asked == ["n0", "n1", "n3"]
    assert (await nodes[0].service.ask(Matrix("dc1"))).asked == ["n0", "n1"]
    envelope = await nodes[0].service.envelope(Matrix("dc1"))
    assert envelope["agents"] == ["n0", "n1", "n2"] and envelope["tag"] == "dc1"


@pytest.mark.parametrize(("asker_in_view", "why"), [
    (None, "is not a member"),
    ("dead", "is dead"),
    ("left", "is left"),
    ("other-cert", "certificate other than"),
])  # fmt: skip
async def test_only_live_members_with_their_own_certificate_may_ask(
        asker_in_view: str | None, why: str) -> None:  # fmt: skip
    _, nodes, views = mesh(3)
    others = [p for p in views["n1"] if p.name != "n0"]
    if asker_in_view is None:
        views["n1"] = others
    elif asker_in_view == "other-cert":
        views["n1"] = [*others, dataclasses.replace(nodes[0].peer(), fingerprint="fp-stolen")]
    else:
        views["n1"] = [*others, nodes[0].peer(asker_in_view)]
    outcome = await nodes[0].service.ask(Latest())
    assert set(outcome.answers) == {"n0", "n2"}
    assert outcome.missing["n1"].reason == "refused" and why in outcome.missing["n1"].detail
    assert outcome.partial
    assert nodes[1].asked == []  # refused before anything was read
    assert sum(nodes[1].service.refused.values()) == 1


async def test_unreachable_timeout_and_error_are_told_apart() -> None:
    net, nodes, _ = mesh(5, config=QueryConfig(timeout=0.5))
    net.blocked.add(("tcp", nodes[0].addr, nodes[1].addr))

    async def hang(peer: PeerIdentity, body: bytes) -> bytes:
        await trio.sleep_forever()
        raise AssertionError

    async def garbage(peer: PeerIdentity, body: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        return cbor2.dumps({"v": 1, "data": {"results": 5}})

    async def crash(peer: PeerIdentity, body: bytes) -> bytes:
        raise RuntimeError("disk on fire")

    nodes[2].transport.on_request(KIND, hang)
    nodes[3].transport.on_request(KIND, garbage)
    nodes[4].transport.on_request(KIND, crash)
    with trio.fail_after(10):
        outcome = await nodes[0].service.ask(Latest())
    reasons = {n: m.reason for n, m in outcome.missing.items()}
    assert reasons == {"n1": "unreachable", "n2": "timeout", "n3": "error", "n4": "error"}
    assert "'results' list" in outcome.missing["n3"].detail
    assert "disk on fire" in outcome.missing["n4"].detail
    assert list(outcome.answers) == ["n0"]


async def test_oversize_answers_are_cut_and_marked() -> None:
    _, nodes, _ = mesh(3, rows=2000)
    outcome = await nodes[0].service.ask(Latest(), max_bytes=MIN_ANSWER_BYTES)
    assert outcome.missing == {}
    assert outcome.truncated == ["n0", "n1", "n2"] and outcome.partial
    for data in outcome.answers.values():
        assert 0 < len(data["results"]) < 2000
        assert len(encode_answer(data)) <= MIN_ANSWER_BYTES


async def test_a_peer_that_ignores_the_limit_is_an_error_not_an_answer() -> None:
    _, nodes, _ = mesh(2)

    async def flood(peer: PeerIdentity, body: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        return encode_answer({"results": [{"check": "x" * 200}] * 100})

    nodes[1].transport.on_request(KIND, flood)
    outcome = await nodes[0].service.ask(Latest(), max_bytes=MIN_ANSWER_BYTES)
    assert outcome.missing["n1"].reason == "error"
    assert "exceeds" in outcome.missing["n1"].detail


async def test_many_agents_share_the_total_byte_budget() -> None:
    _, nodes, _ = mesh(2, config=QueryConfig(max_total_bytes=100 * 2**10))
    service = nodes[0].service
    assert service.per_agent_bytes(2) == 50 * 2**10
    assert service.per_agent_bytes(1000) == MIN_ANSWER_BYTES
    assert service.per_agent_bytes(1, max_bytes=4096) == 4096


async def test_malformed_questions_get_an_error_answer() -> None:
    _, nodes, _ = mesh(2)
    with pytest.raises(AnswerError, match="malformed question"):
        decode_answer(await nodes[0].transport.request(nodes[1].addr, KIND, b"\x00"))
    assert nodes[1].asked == []


async def test_the_envelope_has_the_documented_shape() -> None:
    _, nodes, views = mesh(3)
    views["n2"] = [p for p in views["n2"] if p.name != "n0"]  # n2 refuses n0

    class Archive:
        async def history(self, question: History) -> dict[str, Any] | None:
            await trio.lowlevel.checkpoint()
            return {"from": "aggregator", "check": question.check}

    nodes[0].service.archive = Archive()
    out = await nodes[0].service.envelope(History("c", "t", 1.0, None, 50), timeout=1.0)
    assert set(out) == {"question", "asker", "asked", "answered", "partial", "missing",
                        "details", "truncated", "elapsed_ms", "answers", "check", "target",
                        "since", "until", "points", "archive"}  # fmt: skip
    assert out["question"] == "history" and out["asker"] == "n0"
    assert (out["asked"], out["answered"], out["partial"]) == (3, 2, True)
    assert out["missing"] == {"n2": "refused"} and "n2 refused" in out["details"]["n2"]
    assert list(out["answers"]) == ["n0", "n1"] and out["truncated"] == []
    assert out["archive"] == {"from": "aggregator", "check": "c"}
