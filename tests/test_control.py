"""The control API's server (h11 on trio, unix socket) and its blocking client, in one process.

Real unix sockets; the agent behind the API is a stand-in that answers from fixed data (the
endpoints' contents are covered with real agents in test_runtime_faults and the CLI tests).
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from meshmon import control
from meshmon.control import (
    BadParameter,
    ControlClient,
    ControlError,
    MeshQuery,
    ResultQuery,
    serve_control,
)


class FakeAgent:
    def __init__(self) -> None:
        self.queries: list[ResultQuery] = []

    def api_status(self) -> dict[str, Any]:
        return {"node": "n1", "uptime_s": 1.0}

    def api_members(self) -> list[dict[str, Any]]:
        return [{"name": "n1", "state": "alive"}]

    def api_assignments(self) -> dict[str, Any]:
        return {"mine": [], "coverage": []}

    def api_alerts(self) -> dict[str, Any]:
        return {"enabled": False}

    def api_results(self, query: ResultQuery) -> list[dict[str, Any]]:
        self.queries.append(query)
        if query.check == "boom":
            raise RuntimeError("a bug")
        return [{"check": query.check, "limit": query.limit}]

    async def api_mesh(self, query: MeshQuery) -> dict[str, Any]:
        await trio.sleep(0.2)  # asks the other agents: an answer that takes a while
        if query.question.check == "starting":
            raise ControlError("the agent's mesh is still starting; ask again in a moment")
        return {"question": "latest", "check": query.question.check}


@asynccontextmanager
async def serving(path: Path) -> AsyncIterator[FakeAgent]:
    agent = FakeAgent()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, agent, path)
        yield agent
        nursery.cancel_scope.cancel()


def raw(path: Path, data: bytes, half_close: bool = False) -> bytes:
    """Send ``data`` and read until the server closes (blocking: run in a thread)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def split(answer: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


async def test_client_gets_json_and_turns_refusals_into_errors(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with trio.fail_after(20):
        async with serving(path) as agent:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            client = ControlClient(path, timeout=5)
            get = client.get
            assert await trio.to_thread.run_sync(get, "status") == {"node": "n1", "uptime_s": 1.0}
            assert await trio.to_thread.run_sync(get, "members") == [{"name": "n1",
                                                                      "state": "alive"}]
            rows = await trio.to_thread.run_sync(lambda: get("results", check="c", limit=5,
                                                             latest=True))
            assert rows == [{"check": "c", "limit": 5}]
            assert agent.queries[-1].latest is True
            with pytest.raises(BadParameter) as bad:
                await trio.to_thread.run_sync(lambda: get("results", since="nan"))
            assert bad.value.parameter == "since" and "finite" in str(bad.value)
            with pytest.raises(ControlError, match="no endpoint /v1/nope"):
                await trio.to_thread.run_sync(get, "nope")
            with pytest.raises(ControlError, match="internal error: a bug"):
                await trio.to_thread.run_sync(lambda: get("results", check="boom"))
            # a mesh-wide question is awaited; an agent not ready says so (503)
            answer = await trio.to_thread.run_sync(lambda: get("mesh/latest", check="c"))
            assert answer == {"question": "latest", "check": "c"}
            with pytest.raises(ControlError, match="still starting"):
                await trio.to_thread.run_sync(lambda: get("mesh/latest", check="starting"))
        assert not path.exists()  # removed when the server stops


async def test_client_says_no_agent_answers_when_nothing_listens(tmp_path: Path) -> None:
    client = ControlClient(tmp_path / "missing.sock", timeout=2)
    with pytest.raises(ControlError, match=r"no agent answers at .*missing\.sock"):
        await trio.to_thread.run_sync(client.get, "status")


async def test_server_refuses_what_it_does_not_serve_with_json_reasons(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with trio.fail_after(20):
        async with serving(path):
            def ask(data: bytes) -> tuple[int, dict[str, str], Any]:
                return split(raw(path, data))

            status, _, body = await trio.to_thread.run_sync(ask, (
                b"POST /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                b"Connection: close\r\n\r\n{}"))
            assert status == 405 and "read-only" in body["error"]
            status, _, body = await trio.to_thread.run_sync(ask, (
                b"GET /v1/status HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"))
            assert status == 400 and "WebSocket" in body["error"]
            status, _, body = await trio.to_thread.run_sync(ask, b"garbage\r\n\r\n")
            assert status == 400 and "bad HTTP request" in body["error"]
            big = b"x" * (control.MAX_BODY + 1)
            status, _, body = await trio.to_thread.run_sync(ask, (
                b"POST /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(big)
                + big))
            assert status == 413 and "too large" in body["error"]
            status, headers, body = await trio.to_thread.run_sync(
                ask, b"GET /v1/members HTTP/1.0\r\n\r\n")
            assert status == 200 and body[0]["name"] == "n1"
            assert headers["content-type"] == "application/json"


async def test_keep_alive_serves_requests_in_turn_and_idle_clients_are_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.5)
    path = tmp_path / "control.sock"
    with trio.fail_after(20):
        async with serving(path):
            two = (b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"GET /v1/members HTTP/1.1\r\nHost: x\r\n\r\n")  # fmt: skip
            # no half-close: the server answers both, then closes the idle connection itself
            answer = await trio.to_thread.run_sync(raw, path, two)
            assert answer.count(b"HTTP/1.1 200 OK") == 2
            assert b'"node": "n1"' in answer and b'"state": "alive"' in answer
            silent = await trio.to_thread.run_sync(raw, path, b"")
            assert silent == b""


async def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    path.write_text("left by a killed agent")
    with trio.fail_after(20):
        async with serving(path):
            assert stat.S_ISSOCK(path.stat().st_mode)
            client = ControlClient(path)
            assert (await trio.to_thread.run_sync(client.get, "status"))["node"] == "n1"
    assert os.listdir(tmp_path) == []
