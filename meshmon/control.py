"""The agent's local control API: JSON over HTTP on a unix socket, served inside the agent.

Theory of operation
-------------------
The CLI and the TUI are clients of this API; they never reach into the agent process. The API
is a small ASGI application served by hypercorn on trio (the agent's own event loop), bound to
a unix socket (mode 0600: only the agent's user may talk to it). Every endpoint is read-only
and answers from the agent's in-memory state, so a slow client cannot stall probing.

Endpoints (all ``GET``, all JSON):

``/v1/status``        identity, uptime, version, config version, store stats and health
                      (``state`` ok/failing/failed, ``since``, ``reason``, ``advice``,
                      ``buffered``, ``lost``, ``last_outage``, ``recovery_report``), loss
                      counters, degraded flag (and ``degraded_reason`` when the store fails)
``/v1/members``       the membership view
``/v1/assignments``   what this agent probes, who probes what, coverage per target
``/v1/results``       stored results; query ``check``, ``target``, ``since`` (seconds, or a
                      duration like ``10m``), ``until``, ``limit``, ``latest=1``

A bad query parameter answers 400 with ``{"error": ..., "parameter": ...}``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

import trio

from meshmon.configload import parse_duration

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


class AgentApi(Protocol):
    """What the control API needs from an agent; each method returns JSON-ready data."""

    def api_status(self) -> dict[str, Any]: ...

    def api_members(self) -> list[dict[str, Any]]: ...

    def api_assignments(self) -> dict[str, Any]: ...

    def api_results(self, query: ResultQuery) -> list[dict[str, Any]]: ...


def _time_param(name: str, text: str, now: float) -> float:
    """``since``/``until``: an epoch timestamp, or a duration meaning "that long ago"."""
    try:
        value = float(text)
    except ValueError:
        try:
            return now - parse_duration(text)
        except ValueError as exc:
            raise BadParameter(name, str(exc)) from None
    if value > 10**8:  # an epoch timestamp
        return value
    return now - value


def parse_result_query(params: Mapping[str, list[str]], now: float) -> ResultQuery:
    """Turn query-string parameters into a :class:`ResultQuery`.

    Raises:
        BadParameter: naming the parameter and what is allowed.
    """
    allowed = {"check", "target", "since", "until", "limit", "latest"}
    for name in params:
        if name not in allowed:
            raise BadParameter(name, f"unknown parameter; allowed: {', '.join(sorted(allowed))}")

    def one(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values else None

    limit_text = one("limit")
    limit = 1000
    if limit_text is not None:
        if not limit_text.isdigit() or not 0 < int(limit_text) <= 100_000:
            raise BadParameter("limit", f"{limit_text!r} is not a number in 1..100000")
        limit = int(limit_text)
    since, until = one("since"), one("until")
    latest = one("latest")
    if latest not in (None, "0", "1", "true", "false"):
        raise BadParameter("latest", f"{latest!r}: use 1 or 0")
    return ResultQuery(
        check=one("check"),
        target=one("target"),
        since=_time_param("since", since, now) if since else None,
        until=_time_param("until", until, now) if until else None,
        limit=limit,
        latest=latest in ("1", "true"),
    )


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ControlApp:
    """The ASGI application over an :class:`AgentApi`."""

    def __init__(self, agent: AgentApi) -> None:
        self.agent = agent
        self.routes: dict[str, Callable[[Mapping[str, list[str]]], Any]] = {
            f"{API_PREFIX}/status": lambda _: self.agent.api_status(),
            f"{API_PREFIX}/members": lambda _: self.agent.api_members(),
            f"{API_PREFIX}/assignments": lambda _: self.agent.api_assignments(),
            f"{API_PREFIX}/results": lambda q: self.agent.api_results(
                parse_result_query(q, time.time())
            ),
        }

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        status, body = self.dispatch(scope["method"], scope["path"],
                                     scope.get("query_string", b""))  # fmt: skip
        payload = json.dumps(body, default=str).encode()
        await send({
            "type": "http.response.start", "status": status,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode())],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": payload})

    def dispatch(self, method: str, path: str, query_string: bytes) -> tuple[int, Any]:
        """Answer one request: (HTTP status, JSON body)."""
        if method != "GET":
            return 405, {"error": f"{method} not allowed; the control API is read-only"}
        handler = self.routes.get(path.rstrip("/"))
        if handler is None:
            return 404, {"error": f"no endpoint {path}", "endpoints": sorted(self.routes)}
        try:
            params = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
            return 200, handler(params)
        except BadParameter as exc:
            return 400, {"error": str(exc), "parameter": exc.parameter}
        except Exception as exc:  # an API bug must not take the agent down
            log.exception("control API error on %s", path)
            return 500, {"error": f"internal error: {exc}"}


async def serve_control(
    agent: AgentApi,
    socket_path: Path,
    *,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control API on ``socket_path`` until cancelled."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    _prepare_socket(socket_path)
    config = Config()
    config.bind = [f"unix:{socket_path}"]
    config.accesslog = None
    server_log = logging.getLogger("meshmon.control.server")
    server_log.setLevel(logging.WARNING)  # hypercorn's "Running on ... CTRL + C" misleads here
    config.errorlog = server_log
    config.graceful_timeout = 1.0
    old_umask = os.umask(0o077)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, ControlApp(agent), config)
            os.umask(old_umask)
            os.chmod(socket_path, 0o600)
            task_status.started(socket_path)
    finally:
        os.umask(old_umask)
        _remove_socket(socket_path)


def _prepare_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()  # a stale socket left by a killed agent


def _remove_socket(path: Path) -> None:
    path.unlink(missing_ok=True)


class ControlClient:
    """A blocking client for the CLI and the TUI."""

    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        import httpx

        self.socket_path = socket_path
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)),
            base_url="http://meshmon",
            timeout=timeout,
        )

    def get(self, endpoint: str, **params: Any) -> Any:
        """GET ``/v1/<endpoint>``; raises :class:`ControlError` with a next step on failure."""
        import httpx

        query = {k: v for k, v in params.items() if v is not None}
        try:
            response = self._client.get(f"{API_PREFIX}/{endpoint}", params=query)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError(
                f"no agent answers at {self.socket_path} ({exc}); start one with "
                "`meshmon agent run --config FILE`, or point --config/--socket at the running "
                "agent"
            ) from None
        except httpx.HTTPError as exc:
            raise ControlError(f"control API at {self.socket_path} failed: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            raise ControlError(
                f"control API sent a non-JSON answer ({response.status_code})"
            ) from None
        if response.status_code != 200:
            raise ControlError(str(body.get("error", body)))
        return body

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
