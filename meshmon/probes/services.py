"""The probe services an agent runs: the shared ICMP engine and the UDP echo responder.

An agent starts them once in its nursery and passes the context to every probe::

    context = await nursery.start(run_probe_services, "node-a")
    results = await run_probe("ping", "10.0.0.7", {"count": 5}, 5.0, context)

(``context.check`` is per check: use ``dataclasses.replace(context, check=name)``.)
"""

from __future__ import annotations

import trio

from meshmon.probes.base import PLAIN, ProbeContext, UdpCodec
from meshmon.probes.echo_guard import EchoLimits
from meshmon.probes.echo_responder import DEFAULT_ECHO_PORT, UdpEchoResponder
from meshmon.probes.icmp import IcmpConfig, IcmpEngine


async def run_probe_services(
    agent: str,
    *,
    icmp: IcmpConfig | None = None,
    enable_icmp: bool = True,
    echo_address: str | None = "0.0.0.0",
    echo_port: int = DEFAULT_ECHO_PORT,
    codec: UdpCodec = PLAIN,
    echo_limits: EchoLimits | None = None,
    task_status: trio.TaskStatus[ProbeContext] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the ICMP engine and the UDP echo responder until cancelled.

    Args:
        agent: node name recorded in results.
        icmp: engine settings (defaults: auto mode, IPv4 and IPv6).
        enable_icmp: ``False`` runs without ICMP (ping and ICMP traces then report why).
        echo_address: where the UDP echo responder listens; ``None`` runs none.
        echo_port: its port (0 picks a free one, reported as ``context.echo_port``).
        codec: sealing for echo datagrams (plain by default; an agent plugs in the mesh's
            sealing, :func:`meshmon.probes.echo_guard.mesh_codec`).
        echo_limits: the responder's rate limits (defaults: :class:`EchoLimits`).
        task_status: receives the :class:`ProbeContext` once everything listens.

    Raises:
        IcmpPermissionError: ICMP is enabled but no ICMP socket can be opened; the message
            names ``net.ipv4.ping_group_range`` and ``CAP_NET_RAW``.
    """
    engine = IcmpEngine(icmp) if enable_icmp else None
    if engine is not None:
        engine.open()  # fail here, at start, with the operator's fix in the message
    context = ProbeContext(agent=agent, icmp=engine, udp_codec=codec)
    async with trio.open_nursery() as nursery:
        if engine is not None:
            await nursery.start(engine.run)
        if echo_address is not None:
            responder = UdpEchoResponder(echo_address, echo_port, codec, echo_limits)
            context.echo_port = await nursery.start(responder.run)
        task_status.started(context)
