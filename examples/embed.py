"""Embedding a meshmon agent in a trio program.

    python examples/embed.py                  # a throwaway mesh CA and node in a temporary folder
    python examples/embed.py -c agent.toml    # your node's config file (its certificate, seeds...)

The program starts an agent, adds a ping check to 127.0.0.1 at runtime, reads the check's
results as result objects as they are stored, removes the check and stops the agent (which
leaves its mesh gracefully). ICMP needs root, CAP_NET_RAW or a ``net.ipv4.ping_group_range``
that includes the user; without it the results say why the ping could not be sent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import trio

import meshmon
from meshmon import pki

NAME = "loopback"
CHECK = {"name": NAME, "kind": "ping", "targets": ["127.0.0.1"], "interval": "1s",
         "timeout": "1s"}  # fmt: skip
"""The check, written as a ``[[checks]]`` table of the config file would be."""


def throwaway_config(folder: Path) -> meshmon.AgentConfig:
    """A mesh CA, a certificate for one node on 127.0.0.1, and that node's config, built in code
    (``meshmon.config_from_dict`` takes the TOML file's shape; relative paths are from
    ``folder``)."""
    pki.init_ca(folder / "ca")
    pki.issue_cert(folder / "ca", "embedded", folder / "certs", ips=["127.0.0.1"])
    return meshmon.config_from_dict({
        "node": {"name": "embedded", "data_dir": "data"},
        # port 0: any free port (this node starts a mesh of its own; give a fixed port to be
        # found by peers)
        "listen": {"address": "127.0.0.1", "udp_port": 0, "tcp_port": 0},
        "mesh": {"profile": "local"},
        "tls": {"ca_cert": f"certs/{pki.CA_CERT}", "cert": f"certs/{pki.NODE_CERT}",
                "key": f"certs/{pki.NODE_KEY}", "crl": f"certs/{pki.CRL_FILE}"},
    }, folder)  # fmt: skip


async def main(config: meshmon.AgentConfig | Path, count: int) -> None:
    async with meshmon.open_agent(config) as agent:
        print(f"agent {agent.name} started")
        results = agent.subscribe(check=NAME)  # from now on, as they are stored
        agent.add_check(CHECK)
        print(f"added check {NAME!r}: {agent.checks[-1].kind} {CHECK['targets']}")
        seen = 0
        with trio.fail_after(30 + 2 * count):
            async for result in results:
                match result:
                    case meshmon.Ping(result=meshmon.PingResult(successes=ok, failures=lost)):
                        rtt = result.response_time_ms()
                        print(f"  seq {result.seq}: ping {result.target} from {result.agent}: "
                              f"{ok} answered, {lost} lost"
                              + (f", {rtt:.3f} ms" if rtt is not None else "")
                              + (f" ({result.error_message()})" if not ok else ""))
                    case _:
                        print(f"  seq {result.seq}: {result.kind} {result.target}: "
                              f"{result.is_successful()}")
                seen += 1
                if seen == count:
                    break
        stored = agent.results(check=NAME)
        ok = sum(r.is_successful() for r in stored)
        print(f"{len(stored)} result(s) stored, {ok} successful")
        await agent.remove_check(NAME)
        print(f"removed check {NAME!r}; checks now: {list(agent.checks)}")
    print("agent stopped")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", type=Path, help="an agent config file")
    parser.add_argument("-n", "--count", type=int, default=3, help="results to wait for")
    args = parser.parse_args()
    try:
        if args.config is not None:
            trio.run(main, args.config, args.count)
            return
        with tempfile.TemporaryDirectory(prefix="meshmon-embed-") as folder:
            trio.run(main, throwaway_config(Path(folder)), args.count)
    except (meshmon.ConfigError, meshmon.AgentError, meshmon.PkiError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    cli()
