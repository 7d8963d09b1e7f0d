"""``Agent``: wires the parts of a meshmon agent in one trio nursery.

This is the embedding API: build an :class:`Agent` from an :class:`~meshmon.config.AgentConfig`
and ``await agent.run()`` (or ``await nursery.start(agent.run)``); cancel the scope to stop.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

import trio

from meshmon import pki
from meshmon.config import AgentConfig
from meshmon.control import ResultQuery, serve_control
from meshmon.net.tls import MtlsStream, serve_mtls
from meshmon.version import __version__

log = logging.getLogger(__name__)


class AgentError(Exception):
    """The agent cannot start; the message says what to fix."""


class Agent:
    """One meshmon agent."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.started_at = time.time()
        tls = config.tls
        self.identity, self.trust = pki.load_identity(tls.ca_cert, tls.cert, tls.key, tls.crl)
        if self.identity.name != config.node.name:
            raise AgentError(
                f"node.name is {config.node.name!r} but the certificate {tls.cert} is for "
                f"{self.identity.name!r}; set node.name to match or issue a certificate for it"
            )
        self.tcp_port = config.listen.tcp_port

    @property
    def name(self) -> str:
        """This node's name."""
        return self.identity.name

    def server_context(self) -> ssl.SSLContext:
        """A fresh server context (picks up the newest CRL)."""
        return pki.server_context(self.identity, self.trust)

    def client_context(self) -> ssl.SSLContext:
        """A fresh client context (picks up the newest CRL)."""
        return pki.client_context(self.identity, self.trust)

    def describe(self) -> str:
        """One line saying who this agent is and where it listens."""
        listen = self.config.listen
        return (
            f"meshmon {__version__} node {self.name} tags={','.join(self.identity.peer.tags)} "
            f"cert={self.identity.peer.fingerprint[:16]} "
            f"udp={listen.advertise_address}:{listen.udp_port} "
            f"tcp={listen.advertise_address}:{self.tcp_port}"
        )

    async def _handle_stream(self, conn: MtlsStream) -> None:
        log.info("stream from %s at %s:%s", conn.peer.name, *conn.remote)

    # --- the control API's view of the agent (meshmon.control.AgentApi) ---

    def api_status(self) -> dict[str, Any]:
        """Identity, uptime, version and counters."""
        listen = self.config.listen
        return {
            "node": self.name,
            "tags": list(self.identity.peer.tags),
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 1),
            "address": listen.advertise_address,
            "udp_port": listen.udp_port,
            "tcp_port": self.tcp_port,
            "cert_fingerprint": self.identity.peer.fingerprint,
            "cert_expires": self.identity.peer.not_after.isoformat(),
            "crl_number": self.trust.crl_number,
        }

    def api_members(self) -> list[dict[str, Any]]:
        """The membership view (just this node until membership runs)."""
        listen = self.config.listen
        return [{"name": self.name, "address": listen.advertise_address,
                 "udp_port": listen.udp_port, "tcp_port": self.tcp_port, "state": "alive",
                 "incarnation": 0, "tags": list(self.identity.peer.tags),
                 "version": __version__, "since": self.started_at}]  # fmt: skip

    def api_assignments(self) -> dict[str, Any]:
        """What this agent probes and the coverage of each target."""
        return {"mine": [], "coverage": []}

    def api_results(self, query: ResultQuery) -> list[dict[str, Any]]:
        """Stored results matching ``query``."""
        return []

    async def stop(self) -> None:
        """Prepare to stop: announce departure to peers before the nursery is cancelled."""
        log.info("node %s stopping", self.name)

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled."""
        listen = self.config.listen
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                serve_mtls, self._handle_stream, listen.address, listen.tcp_port,
                self.server_context, self.trust,
            )  # fmt: skip
            self.tcp_port = listeners[0].socket.getsockname()[1]
            await nursery.start(serve_control, self, self.config.control_socket)
            log.info("%s", self.describe())
            task_status.started(self)
