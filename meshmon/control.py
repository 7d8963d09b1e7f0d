"""The agent's local control API: JSON over HTTP on a unix socket, served inside the agent.

Theory of operation
-------------------
The CLI and the TUI are clients of this API; they never reach into the agent process. The API
is served on trio (the agent's own event loop) by a few lines over h11, the sans-IO HTTP/1.1
library the HTTP probe uses too, bound to a unix socket (mode 0600: only the agent's user may
talk to it). A general server (hypercorn, with HTTP/2 and WebSocket) cost the agent ~5 MiB of
resident memory and ~40 ms of CPU at every start for a handful of local GETs. Every endpoint is
read-only and answers from the agent's in-memory state, so a slow client cannot stall probing;
at most :data:`MAX_CONNECTIONS` clients are served at once, and one that sends nothing for
:data:`IDLE_TIMEOUT` is disconnected.

Endpoints (all ``GET``, all JSON):

``/v1/status``        identity, uptime, version, config version, store stats and health
                      (``state`` ok/failing/failed, ``since``, ``reason``, ``advice``,
                      ``buffered``, ``lost``, ``last_outage``, ``recovery_report``), loss
                      counters, degraded flag (and ``degraded_reason`` when the store fails),
                      ``sync``: the upload to the aggregator (``state``, ``url``, ``aggregator``,
                      ``cursor``, ``acked``, ``behind``, ``lost``, ``last_success``,
                      ``last_error``, ``failures``, ``backoff_s``..., see meshmon.sync)
``/v1/members``       the membership view; ``rtt_ms`` is the latest direct gossip ping's round
                      trip from this agent (null for itself, members not yet pinged, and
                      members dead or gone)
``/v1/assignments``   what this agent probes, who probes what, coverage per target
``/v1/results``       stored results; query ``check``, ``target``, ``since`` (seconds, or a
                      duration like ``10m``), ``until``, ``limit``, ``latest=1``
``/v1/mesh/latest``   mesh-wide questions, answered by asking the other agents over mTLS:
``/v1/mesh/matrix``   parameters and JSON shapes in :mod:`meshmon.query`; 503 while the
``/v1/mesh/history``  agent's mesh is not running yet

A bad query parameter (unknown, repeated, empty, or not a finite non-negative time: ``nan``,
``inf`` and negative values included) answers 400 with ``{"error": ..., "parameter": ...}``; an
endpoint without parameters refuses any. A WebSocket upgrade answers 400 (JSON reason).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode

import h11
import trio

from meshmon.configload import parse_duration
from meshmon.net.http1 import read_request, send_response
from meshmon.query.wire import (
    MAX_ANSWER_BYTES,
    MAX_POINTS,
    MAX_WINDOW,
    MIN_ANSWER_BYTES,
    History,
    Latest,
    Matrix,
    Question,
)

log = logging.getLogger(__name__)

API_PREFIX = "/v1"


class ControlError(Exception):
    """The control API could not answer; the message says what to do."""


class BadParameter(ControlError):
    """A query parameter is wrong."""

    def __init__(self, parameter: str, problem: str) -> None:
        self.parameter = parameter
        super().__init__(f"{parameter}: {problem}")


@dataclass(frozen=True)
class ResultQuery:
    """Filters for ``/v1/results``."""

    check: str | None = None
    target: str | None = None
    since: float | None = None
    """Wall-clock seconds since the epoch; results at or after it."""
    until: float | None = None
    limit: int = 1000
    latest: bool = False
    """Only the newest result per (check, target)."""


@dataclass(frozen=True)
class MeshQuery:
    """A mesh-wide question from ``/v1/mesh/...`` and how long and how much to gather."""

    question: Question
    timeout: float | None = None
    """Seconds for the whole question; None is the agent's default."""
    max_bytes: int | None = None
    """Answer limit per agent; None is the agent's default."""


class AgentApi(Protocol):
    """What the control API needs from an agent; each method returns JSON-ready data."""

    def api_status(self) -> dict[str, Any]: ...

    def api_members(self) -> list[dict[str, Any]]: ...

    def api_assignments(self) -> dict[str, Any]: ...

    def api_alerts(self) -> dict[str, Any]: ...

    def api_results(self, query: ResultQuery) -> list[dict[str, Any]]: ...

    async def api_mesh(self, query: MeshQuery) -> dict[str, Any]:
        """Raises :class:`ControlError` when the mesh is not running."""
        ...


_TIME_HELP = 'give seconds ago, a duration such as "10m", or a Unix timestamp'


def _time_param(name: str, text: str, now: float) -> float:
    """``since``/``until``: an epoch timestamp, or a duration meaning "that long ago"."""
    try:
        value = float(text)
    except ValueError:
        try:
            ago = parse_duration(text)
        except ValueError as exc:
            raise BadParameter(name, f"{exc}; {_TIME_HELP}") from None
        if not math.isfinite(ago):
            raise BadParameter(name, f"{text!r} is too long ago; {_TIME_HELP}") from None
        return now - ago
    if not math.isfinite(value) or value < 0:
        raise BadParameter(name, f"{text!r} is not a finite, non-negative time; {_TIME_HELP}")
    if value > 10**8:  # an epoch timestamp
        return value
    return now - value


def single_values(params: Mapping[str, list[str]], allowed: frozenset[str]) -> dict[str, str]:
    """One value per parameter, each allowed for the endpoint.

    Raises:
        BadParameter: an unknown parameter, or one given more than once.
    """
    for name, values in params.items():
        if name not in allowed:
            what = f"allowed: {', '.join(sorted(allowed))}" if allowed else "this endpoint has none"
            raise BadParameter(name, f"unknown parameter; {what}")
        if len(values) > 1:
            raise BadParameter(name, f"given {len(values)} times; give it once")
    return {name: values[0] for name, values in params.items()}


RESULT_PARAMS = frozenset({"check", "target", "since", "until", "limit", "latest"})
MAX_LIMIT = 100_000


def parse_result_query(params: Mapping[str, list[str]], now: float) -> ResultQuery:
    """Turn query-string parameters into a :class:`ResultQuery`.

    Raises:
        BadParameter: naming the parameter and what is allowed.
    """
    given = single_values(params, RESULT_PARAMS)
    for name in ("check", "target"):
        if given.get(name) == "":
            raise BadParameter(name, f"empty; give a {name} name or leave {name} out")
    limit = 1000
    if "limit" in given:
        text = given["limit"]
        if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= MAX_LIMIT:
            raise BadParameter("limit", f"{text!r} is not a whole number in 1..{MAX_LIMIT}")
        limit = int(text)
    latest = given.get("latest")
    if latest not in (None, "0", "1", "true", "false"):
        raise BadParameter("latest", f"{latest!r}: use 1 or 0")
    since = _time_param("since", given["since"], now) if given.get("since") else None
    until = _time_param("until", given["until"], now) if given.get("until") else None
    if since is not None and until is not None and since > until:
        raise BadParameter("since", "is later than until; swap them")
    return ResultQuery(
        check=given.get("check"),
        target=given.get("target"),
        since=since,
        until=until,
        limit=limit,
        latest=latest in ("1", "true"),
    )


MESH_PARAMS = {
    "latest": frozenset({"check", "target", "full"}),
    "matrix": frozenset({"tag", "check", "window"}),
    "history": frozenset({"check", "target", "since", "until", "points"}),
}
"""Parameters of each ``/v1/mesh/<question>``, besides ``timeout`` and ``max_bytes``."""
MAX_MESH_TIMEOUT = 30.0


def _number(name: str, text: str, low: float, high: float, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not low <= value <= high:  # nan fails too
        raise BadParameter(name, f"{text!r} is not {what} in {low:g}..{high:g}")
    return value


def _whole(name: str, text: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise BadParameter(name, f"{text!r} is not a whole number in {low}..{high}")
    return int(text)


def _required(given: dict[str, str], name: str, what: str) -> str:
    value = given.get(name, "")
    if not value:
        raise BadParameter(name, f"missing; give the {what}")
    return value


def _optional(given: dict[str, str], name: str) -> str | None:
    if given.get(name) == "":
        raise BadParameter(name, f"empty; give a {name} name or leave {name} out")
    return given.get(name)


def parse_mesh_query(kind: str, params: Mapping[str, list[str]], now: float) -> MeshQuery:
    """Turn the query string of ``/v1/mesh/<kind>`` into a :class:`MeshQuery`.

    Raises:
        BadParameter: naming the parameter and what is allowed.
    """
    given = single_values(params, MESH_PARAMS[kind] | {"timeout", "max_bytes"})
    timeout = (_number("timeout", given["timeout"], 0.1, MAX_MESH_TIMEOUT, "a number of seconds")
               if given.get("timeout") else None)  # fmt: skip
    max_bytes = (_whole("max_bytes", given["max_bytes"], MIN_ANSWER_BYTES, MAX_ANSWER_BYTES)
                 if given.get("max_bytes") else None)  # fmt: skip
    question: Question
    if kind == "latest":
        full = given.get("full")
        if full not in (None, "0", "1", "true", "false"):
            raise BadParameter("full", f"{full!r}: use 1 or 0")
        question = Latest(_optional(given, "check"), _optional(given, "target"),
                          full in ("1", "true"))  # fmt: skip
    elif kind == "matrix":
        window = 300.0
        if given.get("window"):
            text = given["window"]
            try:
                window = float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
            except ValueError as exc:
                raise BadParameter("window", f"{exc}; give seconds or a duration such as 5m"
                                   ) from None  # fmt: skip
            if not 0 < window <= MAX_WINDOW:
                raise BadParameter("window", f"{text!r} must be above 0 and at most 7d")
        question = Matrix(_required(given, "tag", "tag whose members form the matrix"),
                          _optional(given, "check"), window)  # fmt: skip
    else:
        since = _time_param("since", given["since"], now) if given.get("since") else now - 3600
        until = _time_param("until", given["until"], now) if given.get("until") else None
        if until is not None and since > until:
            raise BadParameter("since", "is later than until; swap them")
        points = _whole("points", given["points"], 1, MAX_POINTS) if given.get("points") else 200
        question = History(_required(given, "check", "check name"),
                           _required(given, "target", "target"), since, until, points)
    return MeshQuery(question, timeout, max_bytes)


def _no_params(answer: Callable[[], Any]) -> Callable[[Mapping[str, list[str]]], Any]:
    """A handler for an endpoint that takes no parameters (any given is a 400)."""

    def handler(params: Mapping[str, list[str]]) -> Any:
        single_values(params, frozenset())
        return answer()

    return handler


class ControlApp:
    """Answers the control API's requests from an :class:`AgentApi`: (status, JSON body)."""

    def __init__(self, agent: AgentApi) -> None:
        self.agent = agent
        self.routes: dict[str, Callable[[Mapping[str, list[str]]], Any]] = {
            f"{API_PREFIX}/status": _no_params(self.agent.api_status),
            f"{API_PREFIX}/members": _no_params(self.agent.api_members),
            f"{API_PREFIX}/assignments": _no_params(self.agent.api_assignments),
            f"{API_PREFIX}/alerts": _no_params(self.agent.api_alerts),
            f"{API_PREFIX}/results": lambda q: self.agent.api_results(
                parse_result_query(q, time.time())
            ),
        }
        for kind in MESH_PARAMS:
            self.routes[f"{API_PREFIX}/mesh/{kind}"] = functools.partial(self._mesh, kind)

    def _mesh(self, kind: str, params: Mapping[str, list[str]]) -> Awaitable[dict[str, Any]]:
        return self.agent.api_mesh(parse_mesh_query(kind, params, time.time()))

    async def dispatch(self, method: str, path: str, query_string: bytes) -> tuple[int, Any]:
        """Answer one request: (HTTP status, JSON body)."""
        if method != "GET":
            return 405, {"error": f"{method} not allowed; the control API is read-only"}
        handler = self.routes.get(path.rstrip("/"))
        if handler is None:
            return 404, {"error": f"no endpoint {path}", "endpoints": sorted(self.routes)}
        try:
            params = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
            body = handler(params)
            if inspect.isawaitable(body):
                body = await body
            return 200, body
        except BadParameter as exc:
            return 400, {"error": str(exc), "parameter": exc.parameter}
        except ControlError as exc:  # the agent cannot answer yet (e.g. its mesh is starting)
            return 503, {"error": str(exc)}
        except Exception as exc:  # an API bug must not take the agent down
            log.exception("control API error on %s", path)
            return 500, {"error": f"internal error: {exc}"}

    async def answer(self, request: h11.Request) -> tuple[int, Any]:
        """Answer one parsed request (a WebSocket upgrade gets a 400 saying what to send)."""
        if _upgrade(request):
            return 400, {"error": "the control API does not speak WebSocket; send plain HTTP "
                                  f"GET requests to {', '.join(sorted(self.routes))}"}  # fmt: skip
        path, _, query = request.target.partition(b"?")
        return await self.dispatch(request.method.decode("latin-1"), path.decode("latin-1"),
                                   query)  # fmt: skip


async def serve_control(
    agent: AgentApi,
    socket_path: Path,
    *,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control API on ``socket_path`` (mode 0600) until cancelled."""
    app = ControlApp(agent)
    _prepare_socket(socket_path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o077)  # never a moment when others may connect
        try:
            await sock.bind(str(socket_path))
        finally:
            os.umask(old_umask)
        os.chmod(socket_path, 0o600)
        sock.listen(MAX_CONNECTIONS)
        limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

        async def handle(stream: trio.SocketStream) -> None:
            async with limiter:
                await _serve_connection(app, stream)

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handle, [trio.SocketListener(sock)])
            task_status.started(socket_path)
    finally:
        sock.close()
        _remove_socket(socket_path)


MAX_CONNECTIONS = 16
"""Clients served at once (the CLI and a TUI or two); more wait in the listen backlog."""
IDLE_TIMEOUT = 10.0
"""Seconds a client may take to send a request, or stay idle between two on one connection."""
MAX_BODY = 64 * 1024
"""A GET needs no body; a client sending more than this is answered 413 and disconnected."""


async def _serve_connection(app: ControlApp, stream: trio.SocketStream) -> None:
    """Serve the requests of one connection (HTTP/1.1 keep-alive) with h11, then close it."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = None
            with trio.move_on_after(IDLE_TIMEOUT):
                request = await read_request(conn, stream, MAX_BODY)
            if request is None:
                return  # closed, idle, or too slow to send its request
            # no limit on the answer: a mesh query has its own timeout (see meshmon.query)
            status, body = await app.answer(request)
            with trio.move_on_after(IDLE_TIMEOUT) as sending:
                await _respond(conn, stream, status, body)
            if (sending.cancelled_caught or conn.our_state is not h11.DONE
                    or conn.their_state is not h11.DONE or _upgrade(request)):  # fmt: skip
                return  # not reading, HTTP/1.0, "Connection: close", a refused upgrade
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(h11.LocalProtocolError, trio.BrokenResourceError,
                                     trio.ClosedResourceError):  # fmt: skip
                await _respond(conn, stream, exc.error_status_hint,
                               {"error": f"bad HTTP request: {exc}"})  # fmt: skip
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    finally:
        await trio.aclose_forcefully(stream)


def _upgrade(request: h11.Request) -> bool:
    return any(name == b"upgrade" for name, _ in request.headers)


async def _respond(conn: h11.Connection, stream: trio.SocketStream, status: int,
                   body: Any) -> None:  # fmt: skip
    payload = json.dumps(body, default=str).encode()
    await send_response(conn, stream, status, [(b"content-type", b"application/json")], payload)


def _prepare_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()  # a stale socket left by a killed agent


def _remove_socket(path: Path) -> None:
    path.unlink(missing_ok=True)


class ControlClient:
    """A blocking client for the CLI and the TUI: one HTTP/1.1 GET per connection, with h11.

    Cheap to create and to use (no connection pool, no TLS context: the socket is local), so a
    script may poll many agents.
    """

    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def get(self, endpoint: str, **params: Any) -> Any:
        """GET ``/v1/<endpoint>``; raises :class:`ControlError` with a next step on failure.

        Raises:
            BadParameter: the agent refused a parameter (a usage error).
            ControlError: no agent answers, or it failed.
        """
        query = urlencode({k: _query_value(v) for k, v in params.items() if v is not None})
        target = f"{API_PREFIX}/{endpoint}" + (f"?{query}" if query else "")
        status, raw = self._exchange(target)
        try:
            body = json.loads(raw)
        except ValueError:
            raise ControlError(f"control API sent a non-JSON answer ({status})") from None
        if status == 400 and isinstance(body, dict) and "parameter" in body:
            parameter = str(body["parameter"])
            raise BadParameter(parameter, str(body.get("error", "")).removeprefix(f"{parameter}: "))
        if status != 200:
            raise ControlError(str(body.get("error", body) if isinstance(body, dict) else body))
        return body

    def _exchange(self, target: str) -> tuple[int, bytes]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.socket_path))
            except OSError as exc:
                raise ControlError(
                    f"no agent answers at {self.socket_path} ({exc}); start one with "
                    "`meshmon agent run --config FILE`, or point --config/--socket at the "
                    "running agent"
                ) from None
            try:
                return _get(sock, target)
            except (OSError, h11.ProtocolError) as exc:
                raise ControlError(f"control API at {self.socket_path} failed: "
                                   f"{exc or type(exc).__name__}") from None  # fmt: skip

    def close(self) -> None:
        """Nothing to release (each request has its own connection); kept for callers."""


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _get(sock: socket.socket, target: str) -> tuple[int, bytes]:
    """One GET over a connected socket: (status, body)."""
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=target,
                          headers=[("host", "meshmon"), ("connection", "close")])  # fmt: skip
    sock.sendall(conn.send(request) + conn.send(h11.EndOfMessage()))
    status, chunks = 0, []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return status, b"".join(chunks)
        elif isinstance(event, h11.ConnectionClosed):
            raise ControlError("the agent closed the connection without an answer")
