"""The probe plugin API.

A plugin is a Python package that declares an entry point in the group ``meshmon.probes``::

    [project.entry-points."meshmon.probes"]
    dns = "meshmon_dns_probe:DnsProbe"

The entry point's name (``dns``) is the check ``kind``. It must load to a class (instantiated
once, without arguments) or an object with:

* ``name: str`` and ``version: str`` (recorded in every :class:`PluginResult`);
* ``probe(request: PluginRequest) -> PluginResult`` — an ``async def`` running on the agent's
  trio loop (it must not block: use trio for I/O), or a plain ``def``, which the engine runs in a
  worker thread so blocking code cannot stall the agent.

Optionally, so that ``meshmon config check`` and agent start refuse a bad check up front:

* ``params: Mapping[str, Param]`` (or a whole :class:`~meshmon.probes.params.ParamSchema`) —
  the params the plugin understands, each with its TOML type(s), range or choices and a rule;
  then an unknown param, a wrong type or an out-of-range value is a config error naming the
  key (``checks[2].params.count``). A plugin that declares nothing gets its params unchecked.
* ``check_target(target: str, params: Mapping[str, Any]) -> str | None`` — the problem with a
  target's syntax, or ``None`` (``meshmon.probes.params`` has ready ones: ``host_target``,
  ``host_port_target(...)``, ``url_target``). Without it a target must be non-empty text
  without spaces. It must be pure: no resolving, no traffic.

Build results with :meth:`PluginRequest.result`, which fills in the plugin's name and version.
The engine enforces the check's timeout: a plugin that hangs, raises, or returns anything but a
:class:`PluginResult` yields an error result, and the agent carries on. (A sync plugin that
hangs keeps its worker thread until it returns; the result is reported as timed out at once.)

Example::

    class Echo:
        name = "echo"
        version = "1.0"

        async def probe(self, request: PluginRequest) -> PluginResult:
            t0 = time.monotonic()
            ...
            return request.result(True, response_time_ms=(time.monotonic() - t0) * 1000,
                                  data={"answer": 42})
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from meshmon.results import PluginResult

__all__ = ["PluginRequest", "PluginResult", "ProbePlugin"]


@dataclass(frozen=True)
class PluginRequest:
    """What a plugin is asked to probe."""

    target: str
    """The target as configured."""
    params: Mapping[str, Any]
    """The check's ``params``."""
    timeout: float
    """Seconds the engine allows; finish (with an error result if need be) before it."""
    agent: str
    """Node name of the agent running the check."""
    check: str
    """Name of the check."""
    plugin_name: str = ""
    plugin_version: str = ""
    _extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def result(self, success: bool, *, response_time_ms: float | None = None,
               error: str | None = None, data: Mapping[str, Any] | None = None
               ) -> PluginResult:  # fmt: skip
        """A :class:`PluginResult` carrying this plugin's name and version."""
        return PluginResult(self.plugin_name, self.plugin_version, success, response_time_ms,
                            error, dict(data or {}))  # fmt: skip


@runtime_checkable
class ProbePlugin(Protocol):
    """What an entry point in ``meshmon.probes`` must provide."""

    name: str
    version: str

    def probe(self, request: PluginRequest) -> Awaitable[PluginResult] | PluginResult:
        """Probe ``request.target``; async (trio) or sync (run in a thread)."""
        ...
