"""Probe plugins: the installable example through the registry, and misbehaving plugins."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from meshmon import results as r
from meshmon.probes import PluginRequest, ProbeContext, ProbeRegistry, run_probe

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "plugin_example"
CTX = ProbeContext(agent="node-a", check="plug")


@pytest.fixture(scope="module")
def installed_example() -> Iterator[None]:
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-e", str(EXAMPLE)], check=True, capture_output=True, timeout=120)
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "-q", "meshmon-plugin-example"], check=False,
                       capture_output=True, timeout=120)


SCRIPT = """
import json, sys, trio
from meshmon.probes import ProbeContext, ProbeRegistry
from meshmon.results import to_dict
async def main():
    reg = ProbeRegistry()
    out = {"kinds": reg.kinds, "errors": reg.plugin_errors, "results": []}
    for target, params in json.loads(sys.argv[1]):
        (res,) = await reg.run("banner", target, params, 1.0, ProbeContext("n", "c"))
        out["results"].append(to_dict(res))
    print(json.dumps(out))
trio.run(main)
"""


async def test_installed_example_runs_through_the_registry(installed_example: None) -> None:
    async def greet(stream: trio.SocketStream) -> None:
        await stream.send_all(b"SSH-2.0-meshmon_test\r\n")
        await trio.sleep(5)

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep(5)

    async with trio.open_nursery() as nursery:
        ports = []
        for handler in (greet, silent):
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            ports.append(listeners[0].socket.getsockname()[1])
            nursery.start_soon(trio.serve_listeners, handler, listeners)
        cases = [(f"127.0.0.1:{ports[0]}", {"expect": "^SSH-2\\.0-"}),
                 (f"127.0.0.1:{ports[0]}", {"expect": "^SMTP"}),
                 (f"127.0.0.1:{ports[1]}", {})]
        with trio.fail_after(30):
            proc = await trio.run_process([sys.executable, "-c", SCRIPT, json.dumps(cases)],
                                          capture_stdout=True, capture_stderr=True, cwd=ROOT,
                                          check=False)
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert "banner" in out["kinds"] and out["errors"] == {}
    ok, mismatch, silent_res = (r.from_dict(x) for x in out["results"])
    assert isinstance(ok, r.Plugin) and ok.is_successful() and ok.family is None
    assert ok.result.plugin_name == "banner" and ok.result.plugin_version == "0.1.0"
    assert ok.result.data == {"banner": "SSH-2.0-meshmon_test"}
    assert not mismatch.is_successful() and "does not match" in (mismatch.error_message() or "")
    assert not silent_res.is_successful() and "no banner within" in (
        silent_res.error_message() or "")


def test_config_check_applies_an_installed_plugins_declared_params(installed_example: None,
                                                                   tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    base = ('[node]\nname = "n1"\n[listen]\naddress = "127.0.0.2"\n[[checks]]\nname = "b"\n'
            'kind = "banner"\n')
    config.write_text(base + 'targets = ["127.0.0.1:22"]\nparams = { expect = "^SSH-" }\n')
    command = [sys.executable, "-m", "meshmon", "config", "check", "--skip-files", str(config)]
    ok = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    config.write_text(base + 'targets = ["127.0.0.1"]\nparams = { expect = "(", maxbytes = 9 }\n')
    bad = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert [line.split(": ")[2] for line in lines] == [
        "checks[0].params.maxbytes", "checks[0].params.expect", "checks[0].targets[0]"]
    assert "did you mean 'max_bytes'?" in lines[0] and "not a valid regex" in lines[1]
    assert "has no port" in lines[2]


class Good:
    name, version = "good", "1.2"

    async def probe(self, request: PluginRequest) -> r.PluginResult:
        return request.result(True, response_time_ms=1.5, data={"target": request.target,
                                                                "agent": request.agent})


class Raises:
    name, version = "raises", "0"

    async def probe(self, request: PluginRequest) -> r.PluginResult:
        raise RuntimeError("boom")


class HangsAsync:
    name, version = "hangs", "0"

    async def probe(self, request: PluginRequest) -> r.PluginResult:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


class HangsSync:
    name, version = "blocks", "0"

    def probe(self, request: PluginRequest) -> r.PluginResult:
        time.sleep(1.0)  # blocking code runs in a worker thread, not on the agent's loop
        return request.result(True)


class SyncGood:
    name, version = "sync", "1"

    def probe(self, request: PluginRequest) -> r.PluginResult:
        return request.result(True, data={"n": 1})


class WrongType:
    name, version = "wrong", "0"

    async def probe(self, request: PluginRequest) -> Any:
        return {"success": True}


class Unencodable:
    name, version = "unenc", "0"

    async def probe(self, request: PluginRequest) -> r.PluginResult:
        return request.result(True, data={"x": object()})


REGISTRY = ProbeRegistry({"good": Good(), "raises": Raises(), "hangs": HangsAsync(),
                          "blocks": HangsSync(), "sync": SyncGood(), "wrong": WrongType(),
                          "unenc": Unencodable()}, load_entry_points=False)  # type: ignore[dict-item]


async def run(kind: str, limit: float = 1.0) -> r.MonitoringResult:
    with trio.fail_after(limit + 0.5):
        (res,) = await run_probe(kind, "t1", {"k": 1}, limit, CTX, REGISTRY)
    assert isinstance(res, r.Plugin) and res.agent == "node-a" and res.check == "plug"
    assert r.decode_result(r.encode_result(res)) == res
    return res


async def test_good_plugins_async_and_sync() -> None:
    res = await run("good")
    assert res.is_successful() and res.response_time_ms() == 1.5
    assert res.result.data == {"target": "t1", "agent": "node-a"}  # type: ignore[union-attr]
    assert (await run("sync")).is_successful()


async def test_misbehaving_plugins_give_error_results() -> None:
    raised = await run("raises")
    assert raised.error_message() == "plugin raises raised RuntimeError: boom"
    t0 = trio.current_time()
    hung = await run("hangs", limit=0.2)
    assert hung.error_message() == "plugin hangs timed out after 0.2s"
    assert trio.current_time() - t0 < 0.5
    blocked = await run("blocks", limit=0.2)
    assert blocked.error_message() == "plugin blocks timed out after 0.2s"
    assert "returned dict, not PluginResult" in ((await run("wrong")).error_message() or "")
    assert "cannot be stored" in ((await run("unenc")).error_message() or "")


async def test_unknown_kind_and_registration_rules() -> None:
    res = await run("nope")
    assert "unknown probe kind 'nope'" in (res.error_message() or "")
    with pytest.raises(ValueError, match="clashes with a built-in"):
        REGISTRY.add_plugin("ping", Good())
    with pytest.raises(ValueError, match="has no 'name'"):
        REGISTRY.add_plugin("x", object())  # type: ignore[arg-type]
