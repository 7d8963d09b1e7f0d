-- Results on TimescaleDB: a hypertable with one-day chunks, compression of older chunks, and
-- continuous aggregates results_1m / results_1h with the plain variant's columns. Retention and
-- the policies' windows are set at start from the aggregator's settings (aggregator/rollups.py).

CREATE EXTENSION IF NOT EXISTS timescaledb;

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
    loss       double precision,
    error      text,
    payload    bytea            NOT NULL
);

SELECT create_hypertable('results', by_range('time', INTERVAL '1 day'));

ALTER TABLE results SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'agent, check_name, target',
    timescaledb.compress_orderby = 'time DESC, seq DESC'
);

CREATE MATERIALIZED VIEW results_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', time) AS bucket, check_name, target, agent,
       count(*) AS count,
       count(*) FILTER (WHERE NOT success) AS failures,
       avg(loss) AS loss,
       min(rtt_ms) AS rtt_min, avg(rtt_ms) AS rtt_avg, max(rtt_ms) AS rtt_max,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY rtt_ms) AS rtt_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY rtt_ms) AS rtt_p95,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY rtt_ms) AS rtt_p99
FROM results
GROUP BY 1, 2, 3, 4
WITH NO DATA;

CREATE MATERIALIZED VIEW results_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', time) AS bucket, check_name, target, agent,
       count(*) AS count,
       count(*) FILTER (WHERE NOT success) AS failures,
       avg(loss) AS loss,
       min(rtt_ms) AS rtt_min, avg(rtt_ms) AS rtt_avg, max(rtt_ms) AS rtt_max,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY rtt_ms) AS rtt_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY rtt_ms) AS rtt_p95,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY rtt_ms) AS rtt_p99
FROM results
GROUP BY 1, 2, 3, 4
WITH NO DATA;
