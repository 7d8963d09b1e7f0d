-- Streams, members and API tokens: the same on plain PostgreSQL and TimescaleDB.

CREATE TABLE streams (
    agent            text        NOT NULL,
    store            text        NOT NULL,
    high_water       bigint      NOT NULL DEFAULT 0,   -- every seq <= this is committed
    skipped          bigint      NOT NULL DEFAULT 0,   -- declared gaps (overwritten unsynced)
    lost_total       bigint      NOT NULL DEFAULT 0,   -- the agent's own count, as last reported
    records          bigint      NOT NULL DEFAULT 0,   -- rows inserted
    expired          bigint      NOT NULL DEFAULT 0,   -- arrived older than retention: not kept
    first_sync       timestamptz NOT NULL DEFAULT now(),
    last_sync        timestamptz NOT NULL DEFAULT now(),
    last_sent_at     timestamptz,                      -- the agent's clock when it sent
    last_record_time timestamptz,                      -- newest record time received
    PRIMARY KEY (agent, store)
);

CREATE TABLE members (
    reporter    text        NOT NULL,   -- the agent whose view this is
    name        text        NOT NULL,
    state       text        NOT NULL,
    incarnation bigint      NOT NULL,
    address     text        NOT NULL,
    tags        text[]      NOT NULL,
    version     text        NOT NULL,
    reported_at timestamptz NOT NULL,
    PRIMARY KEY (reporter, name)
);

CREATE TABLE api_tokens (
    id         bigserial   PRIMARY KEY,
    name       text        UNIQUE NOT NULL,
    hash       text        NOT NULL,
    scope      text        NOT NULL CHECK (scope IN ('read', 'admin')),
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used  timestamptz
);
