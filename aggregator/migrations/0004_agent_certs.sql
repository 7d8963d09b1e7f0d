-- Each agent's certificate as the aggregator last saw it at ingest (written by the API layer,
-- aggregator/app.py). Its tags are the agent's group membership for the query API (the tag
-- matrix): the CA grants tags in certificates, so only these count, never what a member report
-- claims.

CREATE TABLE agent_certs (
    agent       text        PRIMARY KEY,   -- the certificate's node name
    tags        text[]      NOT NULL,
    serial      text        NOT NULL,      -- hex
    fingerprint text        NOT NULL,      -- SHA-256 of the DER certificate, hex
    not_after   timestamptz NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX agent_certs_tags ON agent_certs USING gin (tags);
