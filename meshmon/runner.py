"""Runs an :class:`~meshmon.agent.Agent` as a process: signals, graceful stop."""

from __future__ import annotations

import logging
import signal

import trio

from meshmon.agent import Agent
from meshmon.config import AgentConfig

log = logging.getLogger(__name__)


async def serve(config: AgentConfig) -> None:
    """Run an agent until SIGINT or SIGTERM, then stop it cleanly."""
    agent = Agent(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            print(f"agent up: {agent.describe()}", flush=True)
            async for signum in signals:
                log.info("received %s, stopping", signal.Signals(signum).name)
                break
            await agent.stop()
            nursery.cancel_scope.cancel()
    log.info("agent %s stopped", agent.name)


def run_agent(config: AgentConfig) -> None:
    """Blocking entry point for the CLI."""
    trio.run(serve, config)
