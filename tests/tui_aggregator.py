"""A real aggregator with something to see on every TUI screen read from it.

:class:`ThreadedAggregator` serves the aggregator's application (real HTTPS with the mesh's
TLS, a real PostgreSQL, the real ingest writer) from trio in a thread of its own, so that a
test can drive Textual (asyncio) or wait on agent processes in the main thread. :func:`load`
uploads a data set through the real ``POST /v1/ingest``, each batch with its agent's own mesh
certificate, as syncing agents do:

* four agents ``c1``..``c4`` (certificate tags ``mesh`` and ``east``/``west``); ``c4`` died four
  minutes ago (its pings fail since, and ``c1``, which synced last, reports it dead);
* ``mesh-ping``: ``c1``..``c3`` ping every member every 4 s for five minutes (the matrix);
* ``web-http``: ``c1``..``c3`` fetch a web service, ``c2`` expects another status and fails
  ("one prober's path is bad");
* ``closed-tcp``: ``c1`` and ``c3`` connect to a closed port ("target down");
* ``east-trace``: ``c3`` traces ``c1`` and ``c2`` (the Path screen);
* incidents recorded by ``c1``: ``port-closed`` firing, ``web-failing`` resolved an hour ago.

``python -m tests.tui_aggregator --record OUT`` writes the snapshot tests' recording of it.
"""

from __future__ import annotations

import contextlib
import math
import ssl
import sys
import threading
import time
from pathlib import Path

import cbor2
import httpx
import trio

from aggregator.schema import SchemaInfo
from aggregator.writer import Ingestor
from meshmon.alerts.incidents import Incident
from meshmon.alerts.service import incident_json
from meshmon.results import (
    HttpGet,
    HttpGetResult,
    Ping,
    PingResult,
    TcpConnect,
    TcpConnectResult,
    Traceroute,
    TracerouteHop,
    TracerouteResult,
    encode_result,
)
from meshmon.wire import ingest as wire
from meshmon.wire.ingest import INCIDENT_CHECK, MemberReport, SyncRecord
from tests.aggapi_support import Served, serve
from tests.batches import batch
from tests.conftest import Mesh, Node

AGENTS = {"c1": ("mesh", "east"), "c2": ("mesh", "east"), "c3": ("mesh", "west"),
          "c4": ("mesh", "west")}  # fmt: skip
AGENTS_INDEX = {name: i for i, name in enumerate(AGENTS)}
PROBERS = ("c1", "c2", "c3")
DEAD = "c4"
BAD_PROBER = "c2"
WEB = "http://10.0.0.80/"
CLOSED = "10.0.0.81:1"
SPAN = 300.0
"""Seconds of results in the data set."""
STEP = 4.0


class ThreadedAggregator:
    """The aggregator's app served by trio in a thread (see the module docstring)."""

    def __init__(self, mesh: Mesh, database: str, schema: SchemaInfo,
                 tags: tuple[str, ...] = ("aggregator",)) -> None:  # fmt: skip
        self.mesh, self.database, self.schema, self.tags = mesh, database, schema, tags
        self.served: Served | None = None
        self.url = ""
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> str:
        """Serve; the URL once it listens."""
        self._thread = threading.Thread(target=self._run, name="aggregator", daemon=True)
        self._thread.start()
        if not self._ready.wait(120) or self.served is None:
            raise AssertionError(f"the aggregator did not start: {self._error!r}")
        self.url = self.served.url
        return self.url

    def _run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported by start() or stop()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._token = trio.lowlevel.current_trio_token()
            self._scope = nursery.cancel_scope
            ingestor = Ingestor(self.database, self.schema)
            await nursery.start(ingestor.run)
            self.served = await serve(nursery, self.mesh, self.database, ingestor=ingestor,
                                      tags=self.tags)  # fmt: skip
            self._ready.set()

    def stop(self) -> None:
        """Stop serving (connections are refused from now on)."""
        if self._scope is not None and self._token is not None and self._thread is not None:
            with contextlib.suppress(trio.RunFinishedError):  # it already ended
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            self._thread.join(60)
        if self._error is not None:
            raise AssertionError(f"the aggregator failed: {self._error!r}") from self._error

    def upload(self, node: Node, body: wire.Batch) -> wire.Ack:
        """POST a batch with ``node``'s certificate, as its agent's uploader does."""
        ctx = ssl.create_default_context(cafile=str(self.mesh.ca_cert))
        ctx.check_hostname = False
        ctx.load_cert_chain(node.cert, node.key)
        data, encoding = wire.encode_batch(body)
        headers = {"Content-Type": wire.CONTENT_TYPE}
        if encoding:
            headers["Content-Encoding"] = encoding
        with httpx.Client(base_url=self.url, verify=ctx, timeout=60) as client:
            response = client.post(wire.PATH, content=data, headers=headers)
        assert response.status_code == 200, response.text
        return wire.decode_ack(response.content)

    def token(self, name: str = "tui") -> str:
        assert self.served is not None
        return self.served.token(name)


# --- the data set -------------------------------------------------------------------------------


def _ping(agent: str, target: str, t: float, rtt: float | None) -> Ping:
    ok = rtt is not None
    result = PingResult(1 if ok else 0, 0 if ok else 1, (rtt,) if ok else (),
                        () if ok else ("timeout",), rtt, "127.0.0.1")  # fmt: skip
    return Ping(agent=agent, check="mesh-ping", target=target, family=4, started_at=t,
                duration_ms=1.0, result=result)  # fmt: skip


def results_of(agent: str, now: float) -> list[tuple[float, str, str, bytes]]:
    """``(time, check, target, payload)`` of one prober over the last :data:`SPAN` seconds."""
    out: list[tuple[float, str, str, bytes]] = []
    i = AGENTS_INDEX[agent]
    steps = int(SPAN / STEP)
    for n in range(steps):
        t = now - SPAN + n * STEP + 0.1 * i
        for j, other in enumerate(AGENTS):
            if other == agent:
                continue
            dead = other == DEAD and t > now - 240
            rtt = None if dead else round(0.2 + 0.1 * (i + j) + 0.05 * math.sin(n / 7 + j), 3)
            out.append((t, "mesh-ping", other, encode_result(_ping(agent, other, t, rtt))))
        ok = agent != BAD_PROBER
        web = HttpGetResult(200, 3.0 + i + 0.5 * math.sin(n / 5), 120,
                            None if ok else "expected status 204, got 200", ok, url=WEB)
        out.append((t, "web-http", WEB, encode_result(HttpGet(
            agent=agent, check="web-http", target=WEB, family=4, started_at=t,
            duration_ms=4.0, result=web))))  # fmt: skip
        if agent in ("c1", "c3"):
            tcp = TcpConnectResult(False, None, "connection refused", "10.0.0.81", 1)
            out.append((t, "closed-tcp", CLOSED, encode_result(TcpConnect(
                agent=agent, check="closed-tcp", target=CLOSED, family=4, started_at=t,
                duration_ms=0.3, result=tcp))))  # fmt: skip
        if agent == "c3" and n % 2 == 0:
            for target in ("c1", "c2"):
                hops = (TracerouteHop(1, ("10.9.0.1",), 2, 2, (0.4, 0.5)),
                        TracerouteHop(2, (), 2, 0, ()),
                        TracerouteHop(3, (f"127.0.0.{AGENTS_INDEX[target] + 90}",), 2, 2,
                                      (0.9, 1.1)))  # fmt: skip
                trace = TracerouteResult(hops, True, 2.0, ())
                out.append((t, "east-trace", target, encode_result(Traceroute(
                    agent=agent, check="east-trace", target=target, family=4, started_at=t,
                    duration_ms=2.0, result=trace))))  # fmt: skip
    return out


def incidents(now: float) -> list[tuple[float, str, bytes]]:
    """``(time, target, payload)`` of the incident events ``c1`` recorded."""
    down = Incident("inc-closed", "target", ("port-closed", "closed-tcp", CLOSED), now - 180,
                    "c1", probers=("c1", "c3"))  # fmt: skip
    web = Incident("inc-web", "target", ("web-failing", "web-http", WEB), now - 4200, "c1",
                   probers=("c1", "c2"))  # fmt: skip
    web_done = Incident("inc-web", "target", ("web-failing", "web-http", WEB), now - 4200, "c1",
                        resolved_at=now - 3600, probers=("c1", "c2"))  # fmt: skip
    events = [(now - 4200, "firing", web), (now - 3600, "resolved", web_done),
              (now - 180, "firing", down)]  # fmt: skip
    return [(at, inc.key[2], cbor2.dumps({"event": event, **incident_json(inc, at)}))
            for at, event, inc in events]  # fmt: skip


def views(now: float) -> dict[str, tuple[MemberReport, ...]]:
    """The members each reporter sends: ``c2`` before ``c4`` died, ``c1`` after."""
    def report(dead: bool) -> tuple[MemberReport, ...]:
        return tuple(MemberReport(name, "dead" if dead and name == DEAD else "alive",
                                  3 if name == DEAD and dead else 1,
                                  f"127.0.0.{AGENTS_INDEX[name] + 90}:7946", tags, "0.1.0")
                     for name, tags in AGENTS.items())  # fmt: skip

    return {"c2": report(False), "c1": report(True)}


def load(agg: ThreadedAggregator, now: float) -> dict[str, Node]:
    """Upload the data set (see the module docstring); the agents' credentials."""
    nodes = {name: agg.mesh.node(name, tags=tags) for name, tags in AGENTS.items()}
    reported = views(now)
    for agent in ("c4", "c3", "c2", "c1"):  # c1 syncs last: its view is the freshest
        rows = _dead_rows(now) if agent == DEAD else results_of(agent, now)
        if agent == "c1":
            rows += [(t, INCIDENT_CHECK, target, p) for t, target, p in incidents(now)]
        rows.sort(key=lambda r: r[0])
        records = [SyncRecord(seq, t, check, target, payload)
                   for seq, (t, check, target, payload) in enumerate(rows, 1)]  # fmt: skip
        store = f"{AGENTS_INDEX[agent] + 1:032x}"
        agg.upload(nodes[agent], batch(agent, store, records, members=reported.get(agent),
                                       sent_at=time.time()))  # fmt: skip
    return nodes


def _dead_rows(now: float) -> list[tuple[float, str, str, bytes]]:
    """``c4``'s pings of the others, until it died four minutes ago."""
    out = []
    for n in range(int(60 / STEP)):
        t = now - SPAN + n * STEP
        for other in PROBERS:
            out.append((t, "mesh-ping", other, encode_result(_ping(DEAD, other, t, 0.5))))
    return out


# --- the snapshot tests' recording ---------------------------------------------------------------


def record_snapshot_data(root: Path, out: Path) -> None:
    """Start PostgreSQL and the aggregator under ``root``, load the data set and record every
    screen's answers through the TUI's aggregator source."""
    import asyncio

    import psycopg
    from psycopg import sql

    from aggregator import partitions
    from aggregator.postgres import EmbeddedPostgres
    from aggregator.schema import migrate
    from meshmon import pki
    from meshmon.sync.reader import AggregatorReader, reader_context
    from meshmon.tui.recorded import record_aggregator, save
    from tests.pg import FAST

    server = EmbeddedPostgres(root / "pg", settings=FAST)
    server.start()
    try:
        with psycopg.connect(server.url_for("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("tui")))
        with psycopg.connect(server.url_for("tui"), autocommit=True) as conn:
            schema = migrate(conn)
            today = partitions.day_of(time.time())
            partitions.create_days(conn, range(today - 2, today + 1))
        pki.init_ca(root / "ca")
        agg = ThreadedAggregator(Mesh(root / "ca", root), server.url_for("tui"), schema)
        agg.start()
        try:
            load(agg, time.time())
            reader = AggregatorReader(agg.url, reader_context(root / "ca" / pki.CA_CERT),
                                      agg.token())  # fmt: skip
            save(asyncio.run(record_aggregator(reader)), out)
        finally:
            agg.stop()
    finally:
        server.stop()


def main() -> None:
    """``python -m tests.tui_aggregator --record OUT``: write the snapshot tests' recording."""
    import shutil
    import tempfile

    if len(sys.argv) != 3 or sys.argv[1] != "--record":
        sys.exit("usage: python -m tests.tui_aggregator --record OUT")
    root = Path(tempfile.mkdtemp(prefix="meshmon-tuiagg-"))
    root.chmod(0o711)
    try:
        record_snapshot_data(root, Path(sys.argv[2]))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

