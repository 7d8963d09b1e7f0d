-- Alert incident history, as the notifying agents recorded it (ring-store check "_alerts").
-- One row per event (firing / resolved) per agent that recorded it; exactly once like results,
-- because it arrives in the same (agent, store) stream under the same high-water mark.

CREATE TABLE incidents (
    time        timestamptz NOT NULL,   -- when the agent recorded the event
    agent       text        NOT NULL,   -- the agent that recorded it (the notifier)
    store       text        NOT NULL,
    seq         bigint      NOT NULL,
    incident_id text        NOT NULL,
    event       text        NOT NULL,   -- firing | resolved
    kind        text        NOT NULL,   -- target | vantage
    rule        text        NOT NULL,
    check_name  text        NOT NULL,
    target      text        NOT NULL,
    opened_at   timestamptz NOT NULL,
    resolved_at timestamptz,
    probers     text[]      NOT NULL,
    detail      jsonb       NOT NULL
);

CREATE INDEX incidents_time ON incidents (time);
CREATE INDEX incidents_id ON incidents (incident_id);
