"""Embedding an agent in another trio program: ``async with open_agent(config) as agent``.

Theory of operation
-------------------
An embedded agent is the very :class:`~meshmon.agent.Agent` that ``meshmon agent run`` runs —
the same mesh membership, probes, ring store and control socket (so the CLI and the TUI work
against it) — started inside the caller's trio program. :func:`open_agent` checks the config
as agent start does, starts the agent in a task of its own and yields an
:class:`EmbeddedAgent`, the handle the program uses:

* **Checks change at runtime through the path a config reload takes.** The new check list is
  validated exactly as a config file's would be — the same :class:`~meshmon.ConfigError` naming
  the key (``checks[2].interval``) and the fix; a duplicate name is the same error as in a file
  — and applied with :meth:`Agent.reload <meshmon.agent.Agent.reload>`, which starts and stops
  only the assignments that changed. A dict written like a TOML ``[[checks]]`` table is
  accepted as well as a :class:`~meshmon.CheckConfig`.
* **Results are read back as result objects** (:class:`~meshmon.MonitoringResult` variants:
  ``Ping``, ``TcpConnect``, ...) from the agent's ring store, with the ``seq`` the store gave
  them: by query (:meth:`EmbeddedAgent.results`) or as a stream
  (:meth:`EmbeddedAgent.subscribe`) that each store write wakes; nothing polls.
* **Removal is final.** Once ``await agent.remove_check(name)`` returns, no result of that check
  is stored any more: runs in flight are cancelled by the reload, and results already handed to
  the store before the removal have been written by the time it returns.
* **Stopping leaves the mesh gracefully** (peers mark the node "left", not "dead", so no alert
  fires for it), bounded by the membership's leave timeout, then stops every task and closes
  the store. Leaving the ``async with`` block stops the agent; ``await agent.stop()`` does it
  earlier. A handle whose agent stopped raises :class:`trio.ClosedResourceError`.

Errors: a config or check that is wrong raises :class:`~meshmon.ConfigError`; an agent that
cannot start as configured on this host (address not here, port in use, data folder in use)
raises :class:`~meshmon.AgentError`, unwrapped from trio's exception groups. An exception raised
in the ``async with`` body comes out as itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import trio

from meshmon.agent import Agent
from meshmon.alerts.service import STORE_CHECK
from meshmon.config import AgentConfig, CheckConfig
from meshmon.configcheck import check_files, load_checked
from meshmon.configload import ConfigError, ConfigErrors, FieldError, FieldErrors, decode
from meshmon.placement import Assignment
from meshmon.results import MonitoringResult, ResultDecodeError, decode_result
from meshmon.results.encoded import unstored
from meshmon.store import AsyncRingStore, Record

log = logging.getLogger(__name__)

LEAVE_TIMEOUT = 5.0
"""Longest a stop waits for the graceful leave (the membership gives it 2 s) and the shutdown."""


class UnknownCheckError(LookupError):
    """No check of that name runs in the agent; the message lists the ones that do."""


class _Agent(Agent):
    """The agent, telling its handle when results were stored and which stores are in flight."""

    def __init__(self, config: AgentConfig) -> None:
        super().__init__(config)
        self.stored = trio.Event()
        """Set (then replaced) after every store write and when the agent stops."""
        self.sinking: set[int] = set()
        """Store writes under way, by token."""
        self._tokens = itertools.count()

    async def _store_results(self, items: Sequence[tuple[Assignment, Any, bool]]) -> None:
        # The scheduler filters out results of removed checks and calls this in the same step,
        # so a result that passed the filter is registered here before any other task runs.
        token = next(self._tokens)
        self.sinking.add(token)
        try:
            await super()._store_results(items)
        finally:
            self.sinking.discard(token)
            self.wake()

    def wake(self) -> None:
        """Wake whoever waits for stored results."""
        self.stored.set()
        self.stored = trio.Event()


class EmbeddedAgent:
    """A running agent, as :func:`open_agent` yields it. Do not build one directly."""

    def __init__(self, agent: _Agent) -> None:
        self._agent = agent
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        self._stopping = False

    async def _serve(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED
                     ) -> None:  # fmt: skip
        try:
            with self._scope:
                await self._agent.run(task_status=task_status)
        finally:
            self._done.set()
            self._agent.wake()  # subscribers end

    # --- who -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """This node's name (its certificate's)."""
        return self._agent.name

    @property
    def config(self) -> AgentConfig:
        """The running config, with the checks as changed at runtime."""
        return self._agent.config

    @property
    def checks(self) -> tuple[CheckConfig, ...]:
        """The checks the agent runs now."""
        return self._agent.config.checks

    @property
    def agent(self) -> Agent:
        """The underlying :class:`~meshmon.agent.Agent` (internals; not a stable API)."""
        return self._agent

    @property
    def running(self) -> bool:
        """False once the agent has stopped (or is stopping)."""
        return not (self._stopping or self._done.is_set())

    def status(self) -> dict[str, Any]:
        """What ``meshmon status`` shows: identity, uptime, store and loss counters."""
        self._check_running()
        return self._agent.api_status()

    def members(self) -> list[dict[str, Any]]:
        """The membership view as ``meshmon members`` shows it (one dict per member)."""
        self._check_running()
        return self._agent.api_members()

    # --- checks ----------------------------------------------------------------------------

    def add_check(self, check: CheckConfig | Mapping[str, Any]) -> CheckConfig:
        """Start running a check, on this agent and, by placement, across the mesh.

        Args:
            check: a dict written like a ``[[checks]]`` table of the config file
                (``{"name": "lo", "kind": "ping", "targets": ["127.0.0.1"], "interval": "10s"}``;
                relative paths in it are taken from the working folder), or a
                :class:`CheckConfig` (which checks its own fields when it is built, raising
                ``ValueError`` there).

        Returns:
            The check as the agent runs it.

        Raises:
            ConfigError: the check is invalid, a file it names is unusable, or its name is
                already used: the error a config file with it would give, under the source
                ``add_check`` and the key it would have in the file (``checks[N]...``).
            trio.ClosedResourceError: the agent was stopped.
        """
        self._check_running()
        source, index = "add_check", len(self.checks)
        if not isinstance(check, CheckConfig):
            check = _decode_check(check, source, index)
        checks = (*self.checks, check)
        try:  # the config's own checks: a name used twice
            config = dataclasses.replace(self._agent.config, checks=checks)
        except FieldError as exc:
            raise ConfigErrors([ConfigError(source, exc.field, exc.problem)]) from None
        except FieldErrors as exc:
            raise ConfigErrors([ConfigError(source, e.field, e.problem)
                                for e in exc.errors]) from None  # fmt: skip
        issues, _ = check_files({"checks": (check,)})  # files it names (ca_file), as at start
        if issues:
            raise ConfigErrors([ConfigError(source, key.replace("checks[0]", f"checks[{index}]",
                                                                1), problem)
                                for key, problem in issues])  # fmt: skip
        self._agent.reload(config)  # what a config reload applies: only the changed assignments
        return check

    async def remove_check(self, name: str) -> CheckConfig:
        """Stop running check ``name``; once this returns, none of its results is stored.

        Results already stored stay readable (they age out of the ring like any other).

        Returns:
            The removed check.

        Raises:
            UnknownCheckError: no check has that name.
            trio.ClosedResourceError: the agent was stopped.
        """
        self._check_running()
        found = [c for c in self.checks if c.name == name]
        if not found:
            names = ", ".join(repr(c.name) for c in self.checks) or "none"
            raise UnknownCheckError(f"no check named {name!r} runs in agent {self.name} "
                                    f"(its checks: {names})")  # fmt: skip
        in_flight = set(self._agent.sinking)
        checks = tuple(c for c in self.checks if c.name != name)
        self._agent.reload(dataclasses.replace(self._agent.config, checks=checks))
        while in_flight & self._agent.sinking:  # handed to the store before the removal
            await self._agent.stored.wait()
        return found[0]

    # --- results ---------------------------------------------------------------------------

    def results(
        self,
        *,
        check: str | None = None,
        target: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
        order: Literal["newest", "oldest"] = "newest",
        skip_degraded: bool = False,
    ) -> list[MonitoringResult]:
        """Stored results matching every given filter, as result objects with their ``seq``.

        Args:
            check: only this check's results.
            target: only this target's (as configured, or a mesh target's node name).
            since: only results started at or after this Unix time.
            until: only results started at or before this Unix time.
            limit: at most this many.
            order: ``newest`` first (the default) or ``oldest`` first.
            skip_degraded: leave out results taken while this host was starved (loop lag above
                the scheduler's limit), whose latencies say more about the host than the
                network.

        Raises:
            trio.ClosedResourceError: the agent was stopped (its store is closed).
        """
        records = self._store().query(check=check, target=target, since=since, until=until,
                                      limit=limit, order=order)  # fmt: skip
        return decode_records(records, skip_degraded)

    def subscribe(self, *, check: str | None = None, target: str | None = None,
                  skip_degraded: bool = False) -> ResultStream:  # fmt: skip
        """Results stored from now on, as they are stored (``async for r in ...``).

        The stream ends when the agent stops. Filters as in :meth:`results`.
        """
        return ResultStream(self, self._store().core.next_seq, check, target, skip_degraded)

    # --- stopping --------------------------------------------------------------------------

    async def stop(self) -> None:
        """Leave the mesh gracefully and stop the agent; returns once its store is closed.

        Bounded by :data:`LEAVE_TIMEOUT`; shielded, so a cancelled caller still says goodbye.
        Stopping a stopped agent does nothing.
        """
        if self._done.is_set():
            return
        with trio.move_on_after(LEAVE_TIMEOUT) as scope:
            scope.shield = True
            if not self._stopping:
                self._stopping = True
                await self._agent.stop()
            self._scope.cancel()
            await self._done.wait()
        self._scope.cancel()  # the leave overran: stop without it
        await self._done.wait()

    def _check_running(self) -> None:
        if not self.running:
            raise trio.ClosedResourceError(f"agent {self.name} was stopped")

    def _store(self) -> AsyncRingStore:
        self._check_running()
        store = self._agent.store
        assert store is not None, "open_agent yields the handle once the store is open"
        return store


class ResultStream:
    """Results as they are stored; an async iterator that ends when the agent stops."""

    def __init__(self, handle: EmbeddedAgent, next_seq: int, check: str | None,
                 target: str | None, skip_degraded: bool) -> None:  # fmt: skip
        self._handle = handle
        self._next = next_seq
        self._check = check
        self._target = target
        self._skip_degraded = skip_degraded
        self._ready: deque[MonitoringResult] = deque()

    def __aiter__(self) -> ResultStream:
        return self

    async def __anext__(self) -> MonitoringResult:
        agent = self._handle._agent
        while not self._ready:
            if not self._handle.running or agent.store is None:
                raise StopAsyncIteration
            stored = agent.stored  # taken before reading, so no write is missed in between
            records = agent.store.core.read(self._next)
            if not records:
                await stored.wait()
                continue
            self._next = records[-1].seq + 1
            wanted = [r for r in records if (self._check is None or r.check == self._check)
                      and (self._target is None or r.target == self._target)]  # fmt: skip
            self._ready.extend(decode_records(wanted, self._skip_degraded))
        await trio.lowlevel.checkpoint()
        return self._ready.popleft()


def decode_records(records: Iterable[Record], skip_degraded: bool = False
                   ) -> list[MonitoringResult]:  # fmt: skip
    """Stored result records as result objects with their ``seq``; the alert history the store
    also keeps is not a result and is left out, an unreadable record is logged and left out."""
    out: list[MonitoringResult] = []
    unreadable: list[str] = []
    for rec in records:
        if rec.check == STORE_CHECK:
            continue
        try:
            encoded, degraded = unstored(rec.value())
            result = decode_result(encoded)
        except (ResultDecodeError, ValueError, TypeError) as exc:
            unreadable.append(f"seq {rec.seq} ({rec.check} -> {rec.target}): {exc}")
            continue
        if not (skip_degraded and degraded):
            out.append(dataclasses.replace(result, seq=rec.seq))
    if unreadable:
        log.warning("%d stored record(s) are not readable results and were left out: %s",
                    len(unreadable), "; ".join(unreadable[:3]))  # fmt: skip
    return out


def _decode_check(data: Mapping[str, Any], source: str, index: int) -> CheckConfig:
    """A ``[[checks]]`` table as a :class:`CheckConfig`, with the errors a file would give."""
    try:
        return decode(CheckConfig, dict(data), source, Path.cwd())
    except ConfigErrors as exc:
        prefix = f"checks[{index}]"
        raise ConfigErrors([ConfigError(source, f"{prefix}.{e.key}" if e.key else prefix,
                                        e.problem) for e in exc.errors]) from None  # fmt: skip


def _checked(config: AgentConfig | str | os.PathLike[str]) -> AgentConfig:
    """The config, checked as agent start checks a file (TLS files, data folder, ca_file)."""
    if not isinstance(config, AgentConfig):
        return load_checked(config)
    source = "open_agent config"
    sections = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    issues, cert_tags = check_files(sections)
    if issues:
        raise ConfigErrors([ConfigError(source, key, problem) for key, problem in issues])
    if cert_tags and not config.node.tags:
        config = dataclasses.replace(config, node=dataclasses.replace(config.node,
                                                                      tags=cert_tags))
    return config


def _single_leaf(exc: BaseException) -> BaseException | None:
    """The one exception inside nested groups, or None when there are several."""
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def open_agent(config: AgentConfig | str | os.PathLike[str]
                     ) -> AsyncIterator[EmbeddedAgent]:  # fmt: skip
    """Start an agent in this trio program; leave the mesh and stop it on the way out.

    Args:
        config: an :class:`AgentConfig` built in code (``config_from_dict`` builds one from a
            dict shaped like the TOML file), or the path of an agent's TOML file.

    Yields:
        The running agent: joined (or joining) the mesh through its seeds, probing its checks.

    Raises:
        ConfigError: the config, or a file it names, is wrong (every problem, one line each).
        AgentError: the agent cannot start as configured on this host (an address or port
            it cannot bind, a data folder another agent uses...).
        PkiError: the certificate files cannot be used.
    """
    handle = EmbeddedAgent(_Agent(_checked(config)))
    leaf: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(handle._serve)
            try:
                yield handle
            finally:
                await handle.stop()
    except BaseExceptionGroup as group:
        leaf = _single_leaf(group)  # the body's own exception, or the one that stopped start
        if leaf is None:
            raise
    if leaf is not None:
        raise leaf
