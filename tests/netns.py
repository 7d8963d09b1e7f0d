"""Network namespaces for the probe tests: creating one, and priming fresh IPv6 links."""

from __future__ import annotations

import subprocess
import sys

WARM_UP = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect((sys.argv[1], 9))
s.send(b"warm-up")
try:
    s.recv(1)
except ConnectionRefusedError:  # the port unreachable came back: both ways resolved
    pass
"""
"""A UDP datagram to a closed port, waiting for the "port unreachable" that comes back."""


def sh(*cmd: str) -> None:
    """Run a setup command; any failure fails the fixture."""
    subprocess.run(cmd, check=True)


def add_namespace(ns: str) -> None:
    """Create ``ns`` with loopback up and no duplicate address detection: tentative link-local
    addresses would delay neighbour discovery (and so the first IPv6 probes) by a second or
    more."""
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    for key in ("all", "default"):
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0")


def warm_up(ns: str, peer: str) -> None:
    """Let one datagram through from ``ns`` to the IPv6 ``peer`` and back: the first packets
    over fresh links wait ~1 s for neighbour discovery, as long as a probe's reply timeout."""
    sh("ip", "netns", "exec", ns, sys.executable, "-c", WARM_UP, peer)
