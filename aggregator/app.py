"""The aggregator's HTTP API: ingest from agents, queries for readers (FastAPI, ASGI).

Theory of operation
-------------------
One ASGI application, served by :mod:`aggregator.server` (hypercorn on trio, mutual TLS with
client certificates optional). The server puts the client certificate, if any, in the ASGI
``tls`` scope extension; :mod:`aggregator.auth` turns it or a bearer token into a
:class:`~aggregator.auth.Principal`. Routes:

``POST /v1/ingest``            an agent's CBOR batch (:mod:`meshmon.wire.ingest`); the agent's
                               mesh certificate is required and must name ``batch.agent``
``GET  /v1/agents``            agents, their stores, last sync and lag
``GET  /v1/members``           members as each agent last reported them
``GET  /v1/results``           results by range / check / target / agent, raw or rolled up
``GET  /v1/matrix``            latency and loss, probing agent x target agent, of a tag group
``GET  /v1/uptime``            uptime % per check and target over a range
``GET  /v1/incidents``         alert incidents firing, and those resolved recently
``GET  /v1/whoami``            the caller as authenticated
``GET|POST /v1/tokens``,       token management (admin scope)
``DELETE /v1/tokens/{name}``
``GET  /healthz``              liveness and database reachability (no authentication)
``GET  /openapi.json``, ``/docs``  the OpenAPI document and its browser (no authentication:
                               they describe the API, they hold no data)

Every error is JSON ``{"error": "<what, naming the field>"}`` (plus ``parameter`` for a bad
query parameter, and whatever the ingest writer adds, e.g. ``expected``). Query handlers run
their SQL (:mod:`aggregator.queries`) in worker threads through :class:`~aggregator.dbpool.Pool`;
PostgreSQL being down answers 503 and the aggregator keeps serving.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException

from aggregator import auth, queries
from aggregator.auth import Authenticator, AuthError, Principal, TokenError
from aggregator.config import QueryConfig
from aggregator.dbpool import Pool
from aggregator.errors import DatabaseUnavailable, IngestRefused
from aggregator.models import (
    ERRORS,
    AgentOut,
    ErrorOut,
    Health,
    IncidentsOut,
    MatrixOut,
    MemberOut,
    ResultsOut,
    TokenCreated,
    TokenOut,
    TokenRequest,
    UptimeOut,
    WhoAmI,
)
from meshmon.configload import parse_duration
from meshmon.logs import RateLimitedLog
from meshmon.version import __version__
from meshmon.wire import ingest as wire

log = logging.getLogger(__name__)
_refusals = RateLimitedLog(log, interval=30.0)

TLS_PEER_DER = "meshmon.client_cert_der"
"""Key in the ASGI ``tls`` extension where :mod:`aggregator.https` puts the client certificate
in DER (the standard ``client_cert_chain`` holds it as PEM too)."""


class Ingestor(Protocol):
    """What the ingest route needs from the database layer (:class:`aggregator.writer.Ingestor`)."""

    async def ingest_body(self, peer_name: str, body: bytes,
                          encoding: str | None) -> tuple[wire.Ack, int]: ...


@dataclass
class Services:
    """What the routes use; built by :mod:`aggregator.server`, or by tests."""

    pool: Pool
    auth: Authenticator
    ingestor: Ingestor | None = None
    """None: this process serves queries only (ingest answers 503)."""
    query: QueryConfig = field(default_factory=QueryConfig)
    certs_recorded: dict[str, str] = field(default_factory=dict)
    """agent → fingerprint of the certificate last recorded in ``agent_certs``."""


class ApiError(Exception):
    """An error answer: HTTP status and JSON fields (``error`` first)."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        self.status = status
        self.body = {"error": message, **extra}
        super().__init__(message)


# --- helpers ---------------------------------------------------------------------------------


def peer_certificate(scope: MutableMapping[str, Any]) -> bytes | None:
    """The client certificate (DER) from the ASGI ``tls`` extension, if the client sent one."""
    tls = scope.get("extensions", {}).get("tls")
    if not tls:
        return None
    der = tls.get(TLS_PEER_DER)
    if der:
        return bytes(der)
    chain = tls.get("client_cert_chain") or []
    return ssl.PEM_cert_to_DER_cert(chain[0]) if chain else None


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, separators=(",", ":")), status_code=status,
                    media_type="application/json")  # fmt: skip


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def _range(start: dt.datetime | None, end: dt.datetime | None, since: str | None,
           default: float = 3600.0) -> tuple[dt.datetime, dt.datetime]:  # fmt: skip
    """The ``[start, end)`` of a query: ``end`` defaults to now, ``start`` to ``end - since``
    (``since`` a duration, default an hour)."""
    end = _utc(end) if end is not None else dt.datetime.now(dt.UTC)
    if since is not None:
        if start is not None:
            raise ApiError(400, "since: give either start or since, not both", parameter="since")
        try:
            span = parse_duration(since)
        except ValueError as exc:
            raise ApiError(400, f"since: {exc}", parameter="since") from None
        start = end - dt.timedelta(seconds=span)
    start = _utc(start) if start is not None else end - dt.timedelta(seconds=default)
    if start >= end:
        raise ApiError(400, f"start: {start.isoformat()} is not before end ({end.isoformat()})",
                       parameter="start")  # fmt: skip
    return start, end


def _resolution(requested: str, start: dt.datetime, end: dt.datetime,
                config: QueryConfig) -> queries.Resolution:  # fmt: skip
    if requested != "auto":
        return requested  # type: ignore[return-value]
    return queries.choose_resolution(start, end, config.raw_max_range, config.minute_max_range)


StartQ = Annotated[dt.datetime | None, Query(
    description="Range start (ISO 8601 or Unix seconds; no offset means UTC). Default: end "
                "minus `since`, or an hour.")]  # fmt: skip
EndQ = Annotated[dt.datetime | None, Query(description="Range end (exclusive). Default: now.")]
SinceQ = Annotated[str | None, Query(description="Instead of start: a duration back from end, "
                                     "e.g. `10m`, `6h`, `7d`.")]  # fmt: skip
ResolutionQ = Annotated[Literal["auto", "raw", "1m", "1h"], Query(
    description="`auto` picks raw results for short ranges, the 1-minute rollup up to a few "
                "days, the 1-hour rollup beyond.")]  # fmt: skip


# --- the application -------------------------------------------------------------------------


def create_app(services: Services) -> FastAPI:
    """The ASGI application over ``services``."""
    app = FastAPI(
        title="meshmon aggregator", version=__version__,
        description="Central history of a meshmon mesh. Authenticate with `Authorization: "
                    "Bearer TOKEN` (`meshmon aggregator token create`) or a mesh client "
                    "certificate.",
        openapi_url="/openapi.json", docs_url="/docs", redoc_url=None,
    )  # fmt: skip
    bearer = HTTPBearer(auto_error=False, description="A token from `meshmon aggregator token "
                        "create NAME --scope read|admin`.")  # fmt: skip

    def require(scope: auth.Scope) -> Callable[..., Awaitable[Principal]]:
        async def dependency(request: Request, _: Any = Depends(bearer)) -> Principal:
            principal = await services.auth.authenticate(
                request.headers.get("authorization"), peer_certificate(request.scope))
            if not principal.allows(scope):
                raise AuthError(403, f"{principal.kind} {principal.name!r} has the "
                                f"{principal.scope} scope; this needs {scope}")  # fmt: skip
            return principal

        return dependency

    reader, admin = require("read"), require("admin")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return _json(exc.body, exc.status)

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": str(exc)}, exc.status, headers=headers)

    @app.exception_handler(DatabaseUnavailable)
    async def _db_down(request: Request, exc: DatabaseUnavailable) -> Response:
        return _json({"error": f"{exc}; retry later"}, 503)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        where = [str(p) for p in first.get("loc", ()) if p not in ("query", "body", "path")]
        name = ".".join(where) or "request"
        return _json({"error": f"{name}: {first.get('msg', 'invalid')}", "parameter": name}, 400)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        # the traceback is logged by the server (hypercorn re-raises it to its error log)
        return _json({"error": f"internal error ({type(exc).__name__}); the aggregator's log "
                      "has the details"}, 500)  # fmt: skip

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        return _json({"error": str(exc.detail)}, exc.status_code)

    # --- ingest ------------------------------------------------------------------------------

    @app.post("/v1/ingest", tags=["ingest"], response_class=Response, responses={
        200: {"content": {wire.CONTENT_TYPE: {}},
              "description": "CBOR acknowledgement `{high_water, inserted}`."},
        **ERRORS,
        409: {"description": "Undeclared sequence gap; `expected` is where to resume."},
        413: {"model": ErrorOut, "description": "Body too large."},
    }, openapi_extra={"requestBody": {"required": True, "content": {
        wire.CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}}}})  # fmt: skip
    async def ingest(request: Request) -> Response:
        """Upload a batch of an agent's stored results (the sync protocol,
        `meshmon.wire.ingest`). Requires the agent's mesh client certificate; `agent` in the
        batch must be its node name. Idempotent: records at or below the stream's high-water
        mark are not inserted again."""
        peer = await _ingest_peer(request)
        try:
            body = await _read_body(request, wire.MAX_BODY)
        except wire.BatchError as exc:
            _refusals.warning(f"bad:{peer.name}", "ingest from %s refused: %s", peer.name, exc)
            raise ApiError(exc.status, str(exc)) from None
        if services.ingestor is None:
            raise ApiError(503, "ingest is not enabled on this server")
        if services.certs_recorded.get(peer.name) != peer.fingerprint:
            await services.pool.run(queries.record_certificate, peer)
            services.certs_recorded[peer.name] = peer.fingerprint
        try:  # decoded and written by the ingestor (in a writer process where it has some)
            ack, _ = await services.ingestor.ingest_body(peer.name, body,
                                                         request.headers.get("content-encoding"))
        except wire.BatchError as exc:
            _refusals.warning(f"bad:{peer.name}", "ingest from %s refused: %s", peer.name, exc)
            raise ApiError(exc.status, str(exc)) from None
        except IngestRefused as exc:
            _refusals.warning(f"refused:{peer.name}", "ingest from %s refused (%d): %s",
                              peer.name, exc.status, exc.message)  # fmt: skip
            raise ApiError(exc.status, exc.message, **exc.extra) from None
        return Response(wire.encode_ack(ack), media_type=wire.CONTENT_TYPE)

    async def _ingest_peer(request: Request) -> Any:
        der = peer_certificate(request.scope)
        if der is None:
            if request.headers.get("authorization"):
                raise AuthError(403, "ingest needs the agent's mesh client certificate; a "
                                "bearer token cannot upload")  # fmt: skip
            raise AuthError(401, "ingest needs the agent's mesh client certificate (TLS client "
                            "authentication with the node's certificate)")  # fmt: skip
        try:
            return services.auth.certificate(der)
        except AuthError as exc:
            _refusals.warning(f"cert:{request.client}", "ingest refused: %s", exc)
            raise

    # --- queries -----------------------------------------------------------------------------

    @app.get("/v1/agents", tags=["query"], response_model=list[AgentOut], responses=ERRORS)
    async def agents(_: Principal = Depends(reader)) -> Response:
        """Every agent that ever uploaded: its certificate tags, streams (one per store),
        last sync, and lag (age of its newest result held here)."""
        return _json(await services.pool.run(queries.agents))

    @app.get("/v1/members", tags=["query"], response_model=list[MemberOut], responses=ERRORS)
    async def members(
        _: Principal = Depends(reader),
        reporter: Annotated[str | None, Query(description="Only this agent's view.")] = None,
        name: Annotated[str | None, Query(description="Only this member.")] = None,
    ) -> Response:
        """Members as each agent last reported them: one row per (reporter, member). The
        `tags` are the reporter's claim; `certificate_tags` are what the member's own
        certificate said when it last uploaded."""
        return _json(await services.pool.run(queries.members, reporter, name))

    @app.get("/v1/results", tags=["query"], response_model=ResultsOut, responses=ERRORS)
    async def results(
        _: Principal = Depends(reader),
        start: StartQ = None, end: EndQ = None, since: SinceQ = None,
        check: Annotated[str | None, Query(description="Only this check.")] = None,
        target: Annotated[str | None, Query(description="Only this target.")] = None,
        agent: Annotated[str | None, Query(description="Only results measured by this agent.")]
        = None,
        resolution: ResolutionQ = "auto",
        limit: Annotated[int | None, Query(ge=1, description="Most rows (default and ceiling: "
                                           "the server's max_rows).")] = None,
        order: Annotated[Literal["asc", "desc"], Query(description="`desc`: newest first "
                                                       "(with limit: the newest).")] = "asc",
        detail: Annotated[bool, Query(description="Raw rows only: include the decoded result "
                                      "(ping samples, traceroute hops...).")] = False,
        latest: Annotated[bool, Query(description="Only the newest row of each (agent, check, "
                                      "target) in the range.")] = False,
    ) -> Response:  # fmt: skip
        """Results in a time range, filtered by check, target and agent; raw rows, or one
        row per rollup bucket and series (count, failures, mean loss, RTT min/avg/max and
        p50/p95/p99)."""
        lo, hi = _range(start, end, since)
        res = _resolution(resolution, lo, hi, services.query)
        cap = services.query.max_rows
        filters = queries.Filters(lo, hi, check, target, agent)
        data = await services.pool.run(queries.results, filters, res, min(limit or cap, cap),
                                       order == "desc", detail and res == "raw", latest)
        return _json({"start": queries.iso(lo), "end": queries.iso(hi), **data})

    @app.get("/v1/matrix", tags=["query"], response_model=MatrixOut, responses=ERRORS)
    async def matrix(
        tag: Annotated[str, Query(description="The group: agents whose certificate carries "
                                  "this tag are the columns (targets).")],
        _: Principal = Depends(reader),
        from_tag: Annotated[str | None, Query(description="Probing agents (rows): those with "
                                              "this certificate tag; default `tag`.")] = None,
        start: StartQ = None, end: EndQ = None, since: SinceQ = None,
        check: Annotated[str | None, Query(description="Only this check.")] = None,
        resolution: ResolutionQ = "auto",
    ) -> Response:  # fmt: skip
        """The latency and loss matrix of a tag group: rows are probing agents, columns are
        target agents (mesh checks probe agents through `target_tags`), one matrix per
        check. Group membership comes only from certificate tags."""
        lo, hi = _range(start, end, since)
        res = _resolution(resolution, lo, hi, services.query)
        data = await services.pool.run(queries.matrix, tag, queries.Filters(lo, hi, check),
                                       res, from_tag)  # fmt: skip
        return _json({"tag": tag, "start": queries.iso(lo), "end": queries.iso(hi),
                      "resolution": res, **{k: v for k, v in data.items() if k != "tag"}})

    @app.get("/v1/uptime", tags=["query"], response_model=UptimeOut, responses=ERRORS)
    async def uptime(
        _: Principal = Depends(reader),
        start: StartQ = None, end: EndQ = None, since: SinceQ = None,
        check: Annotated[str | None, Query(description="Only this check.")] = None,
        target: Annotated[str | None, Query(description="Only this target.")] = None,
        agent: Annotated[str | None, Query(description="Only this agent's results.")] = None,
        resolution: ResolutionQ = "auto",
    ) -> Response:  # fmt: skip
        """Uptime per check and target over a range (default: the last 24 hours): the
        percentage of results that succeeded, from every probing agent together (or one,
        with `agent`)."""
        lo, hi = _range(start, end, since, default=86400.0)
        res = _resolution(resolution, lo, hi, services.query)
        rows = await services.pool.run(queries.uptime, queries.Filters(lo, hi, check, target,
                                                                       agent), res)  # fmt: skip
        return _json({"start": queries.iso(lo), "end": queries.iso(hi), "resolution": res,
                      "targets": rows})  # fmt: skip

    @app.get("/v1/incidents", tags=["query"], response_model=IncidentsOut, responses=ERRORS)
    async def incidents(
        _: Principal = Depends(reader),
        since: Annotated[str, Query(description="Resolved incidents count as recent back to "
                                    "this long ago, e.g. `24h`, `7d`.")] = "24h",
        limit: Annotated[int, Query(ge=1, le=1000, description="Most recent (resolved) "
                                    "incidents.")] = 100,
    ) -> Response:  # fmt: skip
        """Alert incidents as their notifying agents recorded them: those *firing* (a `firing`
        event recorded and no `resolved` event, however old) and those resolved since `since`.
        Agents record incidents in their stores and upload them with their results, so an
        incident shows here once its notifier has synced."""
        try:
            span = parse_duration(since)
        except ValueError as exc:
            raise ApiError(400, f"since: {exc}", parameter="since") from None
        start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=span)
        data = await services.pool.run(queries.incidents, start, limit)
        return _json({"since": queries.iso(start), **data})

    @app.get("/v1/whoami", tags=["auth"], response_model=WhoAmI, responses=ERRORS)
    async def whoami(principal: Principal = Depends(reader)) -> Response:
        """The caller as the aggregator authenticated it."""
        return _json({"kind": principal.kind, "name": principal.name, "scope": principal.scope,
                      "certificate": principal.peer.name if principal.peer else None})

    # --- tokens (admin) ----------------------------------------------------------------------

    def _token_json(info: auth.TokenInfo) -> dict[str, Any]:
        return {"id": info.id, "name": info.name, "scope": info.scope,
                "created_at": queries.iso(info.created_at),
                "last_used": queries.iso(info.last_used)}  # fmt: skip

    @app.get("/v1/tokens", tags=["auth"], response_model=list[TokenOut], responses=ERRORS)
    async def list_tokens(_: Principal = Depends(admin)) -> Response:
        """Every API token (names and scopes; secrets are never shown again)."""
        return _json([_token_json(t) for t in await services.pool.run(auth.list_tokens)])

    @app.post("/v1/tokens", tags=["auth"], status_code=201, response_model=TokenCreated,
              responses=ERRORS)  # fmt: skip
    async def create_token(body: TokenRequest, _: Principal = Depends(admin)) -> Response:
        """Create a token; the answer holds its secret, shown this once."""
        try:
            token, info = await services.pool.run(auth.create_token, body.name, body.scope)
        except TokenError as exc:
            raise ApiError(400, f"name: {exc}" if "name" in str(exc) else str(exc)) from None
        return _json({**_token_json(info), "token": token}, 201)

    @app.delete("/v1/tokens/{name}", tags=["auth"], status_code=204, response_class=Response,
                responses=ERRORS)  # fmt: skip
    async def revoke_token(name: str, _: Principal = Depends(admin)) -> Response:
        """Revoke (delete) a token; it stops working at once on this server."""
        if not await services.pool.run(auth.revoke_token, name):
            raise ApiError(404, f"name: no token called {name!r}")
        services.auth.forget_tokens()
        return Response(status_code=204)

    # --- health ------------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"], response_model=Health,
             responses={503: {"model": Health}})  # fmt: skip
    async def healthz() -> Response:
        """Liveness and database reachability; needs no authentication."""
        try:
            await services.pool.run(queries.ping)
        except DatabaseUnavailable as exc:
            return _json({"status": "degraded", "database": str(exc), "version": __version__},
                         503)  # fmt: skip
        return _json({"status": "ok", "database": "ok", "version": __version__})

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) beyond ``limit`` bytes before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body: {declared} bytes, more than {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body: more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
