"""The optional central history service: agents upload their results lazily over mutual TLS,
the aggregator bulk-loads them into PostgreSQL/TimescaleDB and answers queries over HTTPS.

Agents run fully serverless without it. Entry point: ``meshmon aggregator run``
(:mod:`aggregator.server`); the HTTP API is :mod:`aggregator.app`.
"""
