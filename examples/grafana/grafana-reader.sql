-- A login for Grafana that may read what the dashboard shows and nothing else (not the
-- aggregator's API tokens). Run once as the database's owner, then give it a password:
--   psql "$MESHMON_DATABASE_URL" -f examples/grafana/grafana-reader.sql
--   psql "$MESHMON_DATABASE_URL" -c '\password meshmon_grafana'
CREATE ROLE meshmon_grafana LOGIN;
GRANT SELECT ON results, results_1m, results_1h, incidents, members, streams, agent_certs
    TO meshmon_grafana;
