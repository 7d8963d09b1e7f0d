-- Results on plain PostgreSQL: one partition per UTC day (created ahead and on demand by the
-- aggregator, dropped by retention) and a BRIN index on time. No btree: one on (agent,
-- check_name, target, time) cut COPY from ~380 k to ~130 k rows/s (measured, PostgreSQL 15);
-- queries over long ranges read the rollups, short ones scan a few BRIN ranges.

CREATE TABLE results (
    time       timestamptz      NOT NULL,
    agent      text             NOT NULL,
    store      text             NOT NULL,
    seq        bigint           NOT NULL,
    check_name text             NOT NULL,
    target     text             NOT NULL,
    kind       text             NOT NULL,
    success    boolean          NOT NULL,
    rtt_ms     double precision,
    loss       double precision,   -- 0..1: ping lost echoes / sent; other kinds 0 or 1
    error      text,
    payload    bytea            NOT NULL   -- the stored CBOR result
) PARTITION BY RANGE (time);

CREATE INDEX results_time_brin ON results USING brin (time);

-- Rollups the aggregator maintains (aggregator/rollups.py), same columns as TimescaleDB's
-- continuous aggregates of the same names.
CREATE TABLE results_1m (
    bucket     timestamptz      NOT NULL,
    check_name text             NOT NULL,
    target     text             NOT NULL,
    agent      text             NOT NULL,
    count      bigint           NOT NULL,
    failures   bigint           NOT NULL,
    loss       double precision,
    rtt_min    double precision,
    rtt_avg    double precision,
    rtt_max    double precision,
    rtt_p50    double precision,
    rtt_p95    double precision,
    rtt_p99    double precision,
    PRIMARY KEY (agent, check_name, target, bucket)
) PARTITION BY RANGE (bucket);

CREATE TABLE results_1h (
    bucket     timestamptz      NOT NULL,
    check_name text             NOT NULL,
    target     text             NOT NULL,
    agent      text             NOT NULL,
    count      bigint           NOT NULL,
    failures   bigint           NOT NULL,
    loss       double precision,
    rtt_min    double precision,
    rtt_avg    double precision,
    rtt_max    double precision,
    rtt_p50    double precision,
    rtt_p95    double precision,
    rtt_p99    double precision,
    PRIMARY KEY (agent, check_name, target, bucket)
);
CREATE INDEX results_1h_bucket ON results_1h (bucket);

-- Time ranges of rows committed since the rollups last ran, one row per ingested batch
-- (written in the batch's transaction, consumed by the rollup job).
CREATE TABLE rollup_pending (
    agent text        NOT NULL,
    lo    timestamptz NOT NULL,
    hi    timestamptz NOT NULL
);
CREATE TABLE rollup_pending_1h (LIKE rollup_pending);
