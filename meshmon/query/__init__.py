"""Mesh-wide queries without a server: any agent answers for the mesh by asking its peers.

Theory of operation
-------------------
An operator (CLI, TUI) asks one agent through its control API. That agent — the *asker* —
sends the question to every agent it concerns (the live members of its membership view, or
those carrying a tag) over the mesh's mutual TLS, as an ``mm-query`` request
(:mod:`meshmon.query.wire`, CBOR bodies), answers for itself from its own store, and
gathers the answers (:mod:`meshmon.query.gather`, a sans-IO core):

* a deadline for the whole question (default 2 s, ``timeout`` per request); an agent that has
  not answered by then is *missing* with reason ``timeout``;
* bounded fan-out: at most ``fanout`` (16) requests in flight; each request also has its own
  limit (half the deadline by default), so a few black-holed peers cannot hold every slot;
* bounded answers: each agent fits its answer into ``max_bytes`` (1 MiB by default, less when
  many agents are asked: the whole gather stays under ``max_total_bytes``), dropping the
  oldest items and marking the answer ``truncated``; the asker refuses bigger frames;
* every agent asked either answers or is listed in ``missing`` with a reason: ``timeout``,
  ``refused`` (it turned the asker away: certificate or membership), ``unreachable`` (no
  connection, or it broke mid-answer) or ``error`` (it answered with an error).

Only mesh members may ask. The TLS handshake already requires a certificate of the mesh CA
that is not revoked or expired; the answering agent then requires that the certificate's node
is a current member (alive or suspect) of *its* view, with the certificate fingerprint the
member announced. A valid certificate of a node that never joined, or that was expelled or
revoked, gets a refusal (:mod:`meshmon.query.service`); ``/v1/status`` counts them under
``queries.refused`` by reason (``not_member``, ``not_live``, ``revoked``,
``other_certificate``), beside ``queries.served``.

Questions (answers built by :mod:`meshmon.query.answers` from the agent's ring store):

* ``latest``: each agent's newest result per (check, target) it holds;
* ``matrix``: for a tag, each agent's recent statistics (loss, RTT median/average over a
  window) toward each member carrying the tag, for the checks whose ``target_tags`` include
  it; asked of the members carrying the tag;
* ``history``: a (check, target) series from each agent that probed it, over a time range, at
  most ``points`` points per agent (downsampled into equal time buckets when there are more).

With an aggregator known (``[sync]`` URLs, or learnt from members), history older than what
agents hold comes from the aggregator: after the agents answer a ``history`` question, the
asker asks the aggregator's ``/v1/results`` with its own mesh certificate for the part of the
range no agent holds (:mod:`meshmon.query.archive`, :mod:`meshmon.sync.archive`), within as
long again as the question's deadline, and adds what it answered under ``archive``.

Control API (JSON, ``GET``; parameters in the query string)
-----------------------------------------------------------
``/v1/mesh/latest``   ``check``, ``target`` (filters), ``full=1`` (add each full result)
``/v1/mesh/matrix``   ``tag`` (required), ``check``, ``window`` (duration, default ``5m``)
``/v1/mesh/history``  ``check``, ``target`` (both required), ``since`` (default ``1h``),
                      ``until``, ``points`` (default 200, at most 2000)

Every endpoint also takes ``timeout`` (seconds, 0.1 to 30, default 2) and ``max_bytes`` (per
agent, 1024 to 16777216, default 1048576). A bad parameter answers 400 ``{"error",
"parameter"}``; an agent whose mesh is not running yet answers 503 ``{"error"}``.

Every answer has this envelope::

    {
      "question": "latest",          # or "matrix", "history"
      "asker": "agent-1",            # the agent that gathered
      "asked": 4,                    # agents the question went to, the asker included
      "answered": 3,                 # len(answers)
      "partial": true,               # true if any agent is missing or truncated
      "missing": {"agent-3": "timeout"},  # timeout | refused | unreachable | error
      "details": {"agent-3": "no answer within 2s"},  # a sentence per missing agent
      "truncated": ["agent-2"],      # answered, but cut to fit max_bytes
      "elapsed_ms": 12.5,
      "answers": {"agent-1": {...}, "agent-2": {...}}   # per agent, shapes below
    }

``latest``, per agent (newest first; truncation drops the oldest)::

    {"results": [{"check": "mesh-ping", "target": "agent-2", "timestamp": 1700000000.1,
                  "seq": 42, "kind": "ping", "success": true, "response_time_ms": 0.08,
                  "loss_pct": 0.0, "jitter_ms": 0.01, "error": null, "degraded": false,
                  "result": {...}}],      # "result" only with full=1: the whole result
     "truncated": false}

``loss_pct`` and ``jitter_ms`` are null for kinds without them (loss of a non-ping result is
not measured per result; ``success`` says it). ``full=1`` with a ``check``/``target`` filter is
how to get bulky results such as a traceroute's hops (``result["result"]["hops"]``) from each
of its probers.

``matrix`` adds ``"tag"``, ``"window_s"`` and ``"agents"`` (the members carrying the tag in
the asker's view, sorted: the rows and columns of the matrix) to the envelope; per agent::

    {"rows": [{"check": "mesh-ping", "target": "agent-2", "samples": 10, "loss_pct": 0.0,
               "rtt_median_ms": 0.07, "rtt_avg_ms": 0.08, "last": 1700000000.1,
               "last_success": true}],
     "truncated": false}

``samples`` counts results in the window; ``loss_pct`` is over probes sent (ICMP echoes for
ping, results for other kinds); ``rtt_*`` over the replies (null when none). A target with no
result from the agent in the window has no row. At most 2,000 results per cell and 20,000 per
answer are read (``truncated`` when cells were left out).

``history`` adds ``"check"``, ``"target"``, ``"since"``, ``"until"`` (epoch seconds; until may
be null: now), ``"points"`` (the limit) and ``"archive"`` (below) to the envelope; per agent
(oldest first)::

    {"points": [{"t": 1700000000.0, "n": 1, "ok": 1, "rtt_ms": 0.08, "rtt_min_ms": 0.08,
                 "rtt_max_ms": 0.08, "loss_pct": 0.0}],
     "downsampled": false, "step_s": null, "records": 120, "oldest": 1699990000.0,
     "truncated": false}

A point is one result (``n`` = 1) or, when ``downsampled``, a bucket of ``step_s`` seconds
starting at ``t`` holding ``n`` results of which ``ok`` succeeded; ``rtt_ms`` is the mean of
the replies, ``loss_pct`` as in the matrix. ``records`` is how many results fell in the range
(at most 10,000 are read: beyond that the oldest are left out and ``truncated`` is true);
``oldest`` is the oldest result this agent holds for the series at all (null if none), so a
client can tell when older history must come from the aggregator. Agents that never probed
the series answer with no points.

``archive`` is null when the asker knows no aggregator or the agents hold the whole range;
otherwise the aggregator's answer for ``[since, until)`` of the range, the part the agents
lack (each agent's points from it are older than that agent's own ``oldest``)::

    {"url": "https://10.0.0.9:7947", "aggregator": "agg-1",   # its certificate's node name
     "resolution": "raw",                                   # or "1m", "1h" (rollup buckets)
     "since": 1699990000.0, "until": 1699996400.0,
     "answers": {"agent-2": {"points": [...], "downsampled": false, "step_s": null,
                             "records": 120}},              # points as above
     "truncated": false,      # the aggregator had more rows (then "partial": true too)
     "missing": null}        # or {"reason": "timeout", "detail": "..."}: then "partial": true

An agent whose store was wiped, or which no longer probes the series, still has its older
points here; an agent in the archive but not in ``answers`` was not asked (gone from the mesh).

The names below are re-exported lazily (PEP 562): an agent serves questions from its first
one on, so the answering code (:mod:`.answers`), the gathering core (:mod:`.gather`) and the
archive (:mod:`.archive`) load with the first question asked or answered, not at start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshmon.query.answers import Context, ResultSource, answer, check_answer, fit
    from meshmon.query.gather import REASONS, Gather, Missing, Outcome
    from meshmon.query.service import HistoryArchive, Peer, QueryConfig, QueryService, render
    from meshmon.query.wire import (
        KIND,
        History,
        Latest,
        Matrix,
        QueryFormatError,
        Question,
        decode_request,
        encode_request,
    )

_WHERE = {
    "meshmon.query.answers": ("Context", "ResultSource", "answer", "check_answer", "fit"),
    "meshmon.query.gather": ("REASONS", "Gather", "Missing", "Outcome"),
    "meshmon.query.service": ("HistoryArchive", "Peer", "QueryConfig", "QueryService", "render"),
    "meshmon.query.wire": ("KIND", "History", "Latest", "Matrix", "QueryFormatError", "Question",
                           "decode_request", "encode_request"),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:  # a submodule (``from meshmon.query import answers``) is found by import
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "KIND",
    "REASONS",
    "Context",
    "Gather",
    "History",
    "HistoryArchive",
    "Latest",
    "Matrix",
    "Missing",
    "Outcome",
    "Peer",
    "QueryConfig",
    "QueryFormatError",
    "QueryService",
    "Question",
    "ResultSource",
    "answer",
    "check_answer",
    "decode_request",
    "encode_request",
    "fit",
    "render",
]
