"""The shapes of the query API's answers, for its OpenAPI document.

The handlers build plain JSON themselves (faster than validating tens of thousands of rows
through these models); these classes say what that JSON is, field by field. Times are ISO 8601
strings with their offset (UTC); durations are seconds; RTTs milliseconds; loss a fraction
(0..1).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """Field docstrings become the fields' descriptions in the OpenAPI document."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class StoreOut(Model):
    """One (agent, store) stream: a store is one ring store's life (a wiped data dir starts
    a new one)."""

    store: str
    high_water: int
    """Every seq at or below this is committed here."""
    records: int | None
    """Rows inserted from this stream."""
    skipped: int | None
    """Seqs the agent declared overwritten in its ring before they could be sent."""
    lost_total: int | None
    """The agent's own count of results its ring overwrote unsynced, as last reported."""
    first_sync: str | None
    last_sync: str | None
    last_sent_at: str | None
    last_record_time: str | None


class AgentOut(Model):
    agent: str
    tags: list[str] | None
    """The agent's certificate tags (None until it uploaded)."""
    last_sync: str | None
    """The last accepted batch, any store."""
    last_record_time: str | None
    """Time of the newest result received from the agent."""
    since_sync_s: float | None
    """Seconds since ``last_sync`` (the database's clock)."""
    lag_s: float | None
    """Age of the newest result held centrally for this agent."""
    records: int
    skipped: int
    lost_total: int
    stores: list[StoreOut]


class MemberOut(Model):
    """One member in one agent's view."""

    reporter: str
    """The agent whose view this is."""
    name: str
    state: str
    incarnation: int
    address: str
    tags: list[str]
    """Tags as the reporter saw them (its claim)."""
    version: str
    reported_at: str | None
    certificate_tags: list[str] | None
    """Tags in the member's own certificate, seen when it last uploaded (None: never)."""


class RawResult(Model):
    time: str
    agent: str
    check: str
    target: str
    kind: str
    success: bool
    rtt_ms: float | None
    """The result's headline latency (ping: the mean of the replies)."""
    loss: float | None
    """Ping: lost echoes / sent; other kinds 0 or 1."""
    error: str | None
    result: dict[str, Any] | None = None
    """The decoded result (``detail=true`` only)."""


class RollupResult(Model):
    """One bucket (1 minute or 1 hour) of one series."""

    time: str
    """The bucket's start."""
    agent: str
    check: str
    target: str
    count: int
    failures: int
    loss: float | None
    rtt_min_ms: float | None
    rtt_avg_ms: float | None
    rtt_max_ms: float | None
    rtt_p50_ms: float | None
    rtt_p95_ms: float | None
    rtt_p99_ms: float | None


class ResultsOut(Model):
    start: str
    end: str
    resolution: Literal["raw", "1m", "1h"]
    truncated: bool
    """More rows matched than were returned (see ``limit`` and ``order``)."""
    rows: list[RawResult] | list[RollupResult]


class Cell(Model):
    """Results aggregated over the range: counts add up, ``loss`` is their mean, the RTT mean
    is over successful results, min and max are exact."""

    count: int
    failures: int
    loss: float | None
    rtt_avg_ms: float | None
    rtt_min_ms: float | None
    rtt_max_ms: float | None


class CheckMatrix(Model):
    check: str
    cells: list[list[Cell | None]]
    """``cells[i][j]``: row agent i probing column agent j."""


class MatrixOut(Model):
    tag: str
    start: str
    end: str
    resolution: Literal["raw", "1m", "1h"]
    rows: list[str]
    """Probing agents."""
    columns: list[str]
    """Target agents."""
    matrices: list[CheckMatrix]


class UptimeRow(Cell):
    check: str
    target: str
    uptime_pct: float | None
    """Successful results / all results x 100, every probing agent together."""
    first: str | None
    last: str | None


class UptimeOut(Model):
    start: str
    end: str
    resolution: Literal["raw", "1m", "1h"]
    targets: list[UptimeRow]


class TokenOut(Model):
    id: int
    name: str
    scope: Literal["read", "admin"]
    created_at: str | None
    last_used: str | None


class TokenCreated(TokenOut):
    token: str
    """The secret: shown once, stored only hashed."""


class TokenRequest(Model):
    name: str
    scope: Literal["read", "admin"] = "read"


class WhoAmI(Model):
    kind: Literal["token", "certificate"]
    name: str
    scope: Literal["read", "admin"]
    certificate: str | None
    """The node name of the client certificate, if one was presented."""


class Health(Model):
    status: Literal["ok", "degraded"]
    database: str
    version: str


class ErrorOut(Model):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "A parameter is wrong (named in the message)."},
    401: {"model": ErrorOut, "description": "No credentials, or an unknown token."},
    403: {"model": ErrorOut, "description": "Refused certificate or insufficient scope."},
    503: {"model": ErrorOut, "description": "The database is unavailable."},
}
