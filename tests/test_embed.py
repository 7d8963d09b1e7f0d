"""The embedding API, in-process: agents started inside this trio program with real
certificates, real sockets on loopback and real ICMP, checks added and removed at runtime,
results read back as result objects. Every wait is on the event itself, under a deadline."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import meshmon
from meshmon import AgentConfig, CheckConfig, ConfigError, Ping, PingResult
from tests.conftest import Mesh, Node

PORT = 17981
"""One port number for every agent here; each agent has its own 127.0.81.x address."""
ROOT = Path(__file__).parent.parent


def config(mesh: Mesh, node: Node, address: str, data: Path, seeds: tuple[str, ...] = (),
           checks: tuple[CheckConfig, ...] = ()) -> AgentConfig:  # fmt: skip
    """A node's config built in code, as an embedding program would."""
    return AgentConfig(
        node=meshmon.NodeConfig(name=node.name, data_dir=data),
        listen=meshmon.ListenConfig(address=address, udp_port=PORT, tcp_port=PORT),
        mesh=meshmon.MeshConfig(seeds=seeds, profile="local"),
        tls=meshmon.TlsConfig(ca_cert=mesh.ca_cert, cert=node.cert, key=node.key, crl=mesh.crl),
        checks=checks,
    )


def ping(name: str, *targets: str, tags: tuple[str, ...] = ()) -> CheckConfig:
    return CheckConfig(name=name, kind="ping", targets=targets, target_tags=tags, replicas=0,
                       interval=0.3, timeout=0.3, params={"count": 1})  # type: ignore[arg-type]


async def first(stream: meshmon.ResultStream, count: int) -> list[meshmon.MonitoringResult]:
    got = []
    async for result in stream:
        got.append(result)
        if len(got) == count:
            break
    return got


async def test_embedded_agent_adds_reads_and_removes_a_check(mesh: Mesh, tmp_path: Path) -> None:
    address = "127.0.81.1"
    node = mesh.node("solo", ips=(address,))
    with trio.fail_after(60):
        async with meshmon.open_agent(config(mesh, node, address, tmp_path / "data")) as agent:
            assert agent.name == "solo" and agent.checks == () and agent.running
            stream = agent.subscribe(check="lo")
            added = agent.add_check(ping("lo", "127.0.0.1"))
            assert agent.checks == (added,)
            got = await first(stream, 3)
            for result in got:  # result objects, as the result model defines them
                assert isinstance(result, Ping) and isinstance(result.result, PingResult)
                assert (result.agent, result.check, result.target) == ("solo", "lo", "127.0.0.1")
                assert result.is_successful() and result.result.successes == 1
                assert result.response_time_ms() is not None and result.error_message() is None
            seqs = [r.seq for r in got]
            assert all(s is not None for s in seqs) and seqs == sorted(set(seqs))  # type: ignore
            stored = agent.results(check="lo", order="oldest")
            assert stored[:3] == got  # the same objects, read back by query
            assert agent.results(check="lo", since=got[-1].started_at, order="oldest")[0] == got[-1]
            assert agent.results(check="other") == []
            assert agent.status()["checks"] == 1

            # removal: a second check keeps running; once it has run several rounds after the
            # removal, "lo" (same interval) would have run too, had it not been removed
            agent.add_check(ping("keep", "127.0.0.1"))
            removed = await agent.remove_check("lo")
            assert removed == added and [c.name for c in agent.checks] == ["keep"]
            mark = agent.agent.store.core.next_seq  # type: ignore[union-attr]
            kept = await first(agent.subscribe(check="keep"), 5)
            assert all(r.seq is not None and r.seq >= mark for r in kept)
            assert all(r.seq < mark for r in agent.results(check="lo"))  # type: ignore[operator]
            assert len(agent.results(check="lo")) >= 3  # what was stored stays readable

            # errors that mean one thing, as a config file gives them
            with pytest.raises(ConfigError, match=r"add_check: checks\[1\]\.name: 'keep' is "
                                                  r"already used by checks\[0\]"):  # fmt: skip
                agent.add_check(ping("keep", "127.0.0.2"))
            with pytest.raises(ConfigError, match=r"add_check: checks\[1\]\.interval: must be "
                                                  r"greater than zero"):  # fmt: skip
                agent.add_check({"name": "bad", "kind": "ping", "targets": ["127.0.0.1"],
                                 "interval": "0s"})
            with pytest.raises(ConfigError, match=r"checks\[1\]\.intervl: unknown key"):
                agent.add_check({"name": "typo", "kind": "ping", "targets": ["127.0.0.1"],
                                 "intervl": "1s"})
            with pytest.raises(ConfigError, match=r"checks\[1\]\.params\.ca_file: .*does not "
                                                  r"exist"):  # fmt: skip
                agent.add_check({"name": "web", "kind": "http", "targets": ["https://127.0.0.1"],
                                 "params": {"ca_file": str(tmp_path / "missing.pem")}})
            with pytest.raises(meshmon.UnknownCheckError, match=r"no check named 'lo'.*'keep'"):
                await agent.remove_check("lo")
            assert [c.name for c in agent.checks] == ["keep"]  # refused changes changed nothing
            tail = agent.subscribe()
        assert not agent.running
        assert [r async for r in tail] == []  # the stream ends with the agent
        with pytest.raises(trio.ClosedResourceError):
            agent.results()
        with pytest.raises(trio.ClosedResourceError):
            agent.add_check(ping("late", "127.0.0.1"))


async def test_two_embedded_agents_form_a_mesh(mesh: Mesh, tmp_path: Path) -> None:
    a_addr, b_addr = "127.0.81.11", "127.0.81.12"
    a = mesh.node("a", tags=("mesh",), ips=(a_addr,))
    b = mesh.node("b", tags=("mesh",), ips=(b_addr,))
    check = ping("mesh-ping", tags=("mesh",))  # every tagged agent probes every other one
    with trio.fail_after(90):
        async with (
            meshmon.open_agent(config(mesh, a, a_addr, tmp_path / "a")) as agent_a,
            meshmon.open_agent(config(mesh, b, b_addr, tmp_path / "b",
                                      seeds=(f"{a_addr}:{PORT}",))) as agent_b,
        ):
            streams = {agent_a.name: agent_a.subscribe(check="mesh-ping", target="b"),
                       agent_b.name: agent_b.subscribe(check="mesh-ping", target="a")}
            agent_a.add_check(check)
            agent_b.add_check(check)
            seen: dict[str, list[meshmon.MonitoringResult]] = {}

            async def watch(name: str) -> None:
                seen[name] = await first(streams[name], 2)

            async with trio.open_nursery() as nursery:
                for name in streams:
                    nursery.start_soon(watch, name)
            for prober, target, address in (("a", "b", b_addr), ("b", "a", a_addr)):
                for result in seen[prober]:  # each measured the other through the mesh
                    assert isinstance(result, Ping) and result.agent == prober
                    assert result.target == target and result.is_successful()
                    assert result.result.resolved_ip == address
            for agent in (agent_a, agent_b):
                states = {m["name"]: m["state"] for m in agent.members()}
                assert states == {"a": "alive", "b": "alive"}


async def test_open_agent_errors_come_out_unwrapped(mesh: Mesh, tmp_path: Path) -> None:
    address = "127.0.81.21"
    node = mesh.node("one", ips=(address,))
    cfg = config(mesh, node, address, tmp_path / "data")
    with trio.fail_after(60):
        async with meshmon.open_agent(cfg):
            # the same data folder (and address) as a running agent: refused, saying why
            with pytest.raises(meshmon.AgentError, match=r"node\.data_dir: .* is in use by "
                                                         r"another running meshmon agent"):
                async with meshmon.open_agent(cfg):
                    pytest.fail("a second agent started on the same data folder")
        other = mesh.node("other", ips=(address,))
        wrong = dataclasses.replace(config(mesh, other, address, tmp_path / "data2"),
                                    node=meshmon.NodeConfig(name="one", data_dir=tmp_path / "d2"))
        with pytest.raises(ConfigError, match=r"open_agent config: node\.name: 'one' does not "
                                              r"match the certificate"):  # fmt: skip
            async with meshmon.open_agent(wrong):
                pass
        async with meshmon.open_agent(cfg) as agent:  # stopped early, from the body
            await agent.stop()
            assert not agent.running
            with pytest.raises(trio.ClosedResourceError):
                agent.status()
            await agent.stop()  # a second stop does nothing
            async with meshmon.open_agent(cfg):  # the data folder is free again
                pass
        with pytest.raises(ValueError, match="from the body"):  # the body's own exception
            async with meshmon.open_agent(cfg) as agent:
                raise ValueError("from the body")
        assert not agent.running


def test_open_agent_reads_a_config_file(mesh: Mesh, tmp_path: Path) -> None:
    address = "127.0.81.31"
    node = mesh.node("filed", ips=(address,))
    path = tmp_path / "agent.toml"
    path.write_text(f"""\
[node]
name = "filed"
data_dir = "data"
[listen]
address = "{address}"
udp_port = {PORT}
tcp_port = {PORT}
[mesh]
profile = "local"
[tls]
ca_cert = "{mesh.ca_cert}"
cert = "{node.cert}"
key = "{node.key}"
crl = "{mesh.crl}"
[[checks]]
name = "lo"
kind = "ping"
targets = ["127.0.0.1"]
interval = "300ms"
timeout = "300ms"
params = {{ count = 1 }}
""")

    async def main() -> list[meshmon.MonitoringResult]:
        with trio.fail_after(60):
            async with meshmon.open_agent(path) as agent:
                assert agent.config.node.tags == ()  # filled from the certificate (none)
                return await first(agent.subscribe(check="lo"), 1)

    (result,) = trio.run(main)
    assert isinstance(result, Ping) and result.agent == "filed" and result.is_successful()
    path.write_text(path.read_text().replace('interval = "300ms"', 'interval = "-1s"'))
    with pytest.raises(ConfigError, match=r"agent\.toml: checks\[0\]\.interval"):
        trio.run(main)


def test_the_example_runs() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "embed.py"), "-n", "2"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "agent embedded started"
    pings = [line for line in lines if ": ping 127.0.0.1 from embedded: " in line]
    assert len(pings) == 2 and all("1 answered" in p or "answered, 0 lost" in p for p in pings)
    assert "removed check 'loopback'; checks now: []" in lines
    assert lines[-1] == "agent stopped"


def test_import_meshmon_is_cheap() -> None:
    code = ("import sys, meshmon; before = set(sys.modules); meshmon.open_agent; meshmon.Ping; "
            "print(sorted(m for m in before if m.startswith('meshmon')), "
            "'meshmon.embed' in sys.modules, 'meshmon.results' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, check=True)
    assert proc.stdout.split() == ["['meshmon',", "'meshmon.version']", "True", "True"]
