"""Runs an :class:`~meshmon.agent.Agent` as a process: signals, reload, graceful stop.

SIGINT/SIGTERM: leave the mesh gracefully, then stop. SIGHUP, or a change of the config file's
modification time: reload the checks (a config that fails validation is logged and ignored, the
running one stays).
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import trio

from meshmon.agent import Agent
from meshmon.config import AgentConfig
from meshmon.configcheck import load_checked
from meshmon.configload import ConfigError

log = logging.getLogger(__name__)

CONFIG_POLL = 2.0
"""Seconds between looks at the config file's modification time."""


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def reload_from(agent: Agent, path: Path) -> bool:
    """Re-read ``path`` and apply its checks; returns False (and logs why) if it is invalid.

    The new config passes exactly the checks of ``meshmon config check`` and agent start.
    """
    try:
        config = load_checked(path)
    except ConfigError as exc:
        for error in getattr(exc, "errors", [exc]):
            log.error("config reload refused, keeping the running config: %s", error)
        return False
    agent.reload(config)
    return True


async def _watch_config(agent: Agent, path: Path) -> None:
    seen = _mtime(path)
    while True:
        await trio.sleep(CONFIG_POLL)
        current = _mtime(path)
        if current != seen:
            seen = current
            log.info("%s changed, reloading", path)
            reload_from(agent, path)


async def serve(config: AgentConfig, config_path: Path | None = None) -> None:
    """Run an agent until SIGINT or SIGTERM, then leave the mesh and stop."""
    agent = Agent(config)
    signals_wanted = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    with trio.open_signal_receiver(*signals_wanted) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            if config_path is not None:
                nursery.start_soon(_watch_config, agent, config_path)
            print(f"agent up: {agent.describe()}", flush=True)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    if config_path is not None:
                        log.info("SIGHUP: reloading %s", config_path)
                        reload_from(agent, config_path)
                    continue
                log.info("received %s, stopping", signal.Signals(signum).name)
                break
            await agent.stop()
            nursery.cancel_scope.cancel()
    log.info("agent %s stopped", agent.name)


def run_agent(config: AgentConfig, config_path: Path | None = None) -> None:
    """Blocking entry point for the CLI."""
    trio.run(serve, config, config_path)
