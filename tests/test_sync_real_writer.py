"""The uploader against the real aggregator's exactly-once writer (``aggregator.writer``) and a
real PostgreSQL, behind the test double's HTTPS shell: offline while the ring wraps, an
acknowledgement lost, then everything the ring held is in the database exactly once and the
rest is counted as skipped and lost."""

from __future__ import annotations

import random
import time
from pathlib import Path

import cbor2
import trio

from aggregator.writer import Ingestor
from meshmon.config import StoreConfig, SyncConfig
from meshmon.store import open_store
from meshmon.sync import Uploader
from meshmon.sync.build import result_bytes
from tests.batches import records
from tests.conftest import Mesh
from tests.pg import Db
from tests.sync_aggregator import TestAggregator, server_context


async def test_the_real_writer_stores_every_held_record_once(mesh: Mesh, tmp_path: Path,
                                                             pg_db: Db) -> None:
    agent, agg_node = mesh.node("agent1"), mesh.node("agg1", tags=("aggregator",))
    identity, trust = mesh.identity(agent)
    assert pg_db.schema is not None
    ingestor = Ingestor(pg_db.url, pg_db.schema)
    agg = TestAggregator(server_context(agg_node.cert, agg_node.key, mesh.ca_cert),
                         backend=ingestor.ingest)
    agg.drop_after_commit = 1
    # what the agent stores: [encode_result bytes, degraded], ~150 bytes each
    stored = [(rec.ts, rec.check, rec.target, cbor2.dumps([rec.payload, False]))
              for rec in records("agent1", 1, 600, time.time() - 300)]
    small = StoreConfig(max_bytes=3 * 8192, segment_bytes=8192)
    async with trio.open_nursery() as nursery, open_store(tmp_path / "store", small) as store:
        await nursery.start(ingestor.run)
        await nursery.start(agg.serve)
        agg.stop()  # offline while the ring wraps
        config = SyncConfig(urls=(agg.url,), batch_size=50, max_delay=0.1, backoff_min=0.02,
                            backoff_max=0.1)
        uploader = Uploader(store, identity, trust, config, lambda: config.all_urls,
                            rng=random.Random(1))
        await nursery.start(uploader.run)
        with trio.fail_after(60):
            for i in range(0, len(stored), 50):
                await store.append_batch(stored[i:i + 50])
            lost = store.stats().cursors["aggregator"]["lost"]
            assert lost > 0
            await nursery.start(agg.serve)
            while uploader.acked < len(stored):
                await uploader.wait_changed()
        nursery.cancel_scope.cancel()
    assert [b.first for b in agg.batches[:2]] == [lost + 1] * 2  # the lost ack, sent again
    with pg_db.connect() as conn:
        rows = conn.execute("SELECT seq, payload FROM results WHERE agent = 'agent1'").fetchall()
        stream = conn.execute("SELECT high_water, skipped, lost_total FROM streams WHERE "
                              "agent = 'agent1' AND store = %s", (store.store_id,)).fetchone()
    seqs = sorted(seq for seq, _ in rows)
    assert seqs == list(range(lost + 1, len(stored) + 1))  # every held record, once
    assert {seq: bytes(p) for seq, p in rows} == {
        seq: result_bytes(stored[seq - 1][3]) for seq in seqs}
    assert stream == (len(stored), lost, lost)
