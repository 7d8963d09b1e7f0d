"""The probe registry: built-in kinds, plugins from entry points, and :func:`run_probe`.

:func:`run_probe` is what the scheduler calls to run one check against one target. It never
raises for anything the network, the target, the parameters or a plugin does: every failure
becomes an error result of the check's kind, produced within the check's ``timeout`` (the
engine enforces it around every probe). It returns a list because ``family = "both"`` measures
each family separately (one result each); otherwise the list has one result.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import math
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

import trio

from meshmon import results as r
from meshmon.probes import base
from meshmon.probes import http as http_mod
from meshmon.probes import ping as ping_mod
from meshmon.probes import tcp as tcp_mod
from meshmon.probes import tls as tls_mod
from meshmon.probes import traceroute as trace_mod
from meshmon.probes import udp as udp_mod
from meshmon.probes.base import ParamError, ProbeContext, ProbeError, Stopwatch
from meshmon.probes.http import HttpParams, http_get
from meshmon.probes.params import Issue, Param, ParamSchema, any_target, validate_params
from meshmon.probes.ping import PingParams, ping
from meshmon.probes.plugin import PluginRequest, ProbePlugin
from meshmon.probes.tcp import tcp_connect
from meshmon.probes.tls import TlsParams, tls_check
from meshmon.probes.traceroute import TraceParams, trace
from meshmon.probes.udp import DEFAULT_ECHO_PORT, UdpParams, udp_probe

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "meshmon.probes"
BUILTIN_KINDS = ("ping", "trace", "tcp", "udp", "http", "tls")
GRACE = 0.5
"""Seconds beyond a check's timeout before the engine cuts a built-in probe off (they all stop
themselves within the timeout; this only guards against a bug)."""


def error_payload(kind: str, message: str, address: str | None, port: int = 0,
                  target: str = "", plugin: tuple[str, str] = ("", "")) -> r.Payload:  # fmt: skip
    """A failed payload of ``kind`` saying ``message``. Pure."""
    if kind == "ping":
        return r.PingResult(0, 0, (), (message,), None, address)
    if kind == "trace":
        return r.TracerouteResult((), False, 0.0, (message,), resolved_ip=address)
    if kind == "tcp":
        return r.TcpConnectResult(False, None, message, address, port)
    if kind == "udp":
        return r.UdpConnectResult(False, None, message, address, port)
    if kind == "http":
        return r.HttpGetResult(None, None, None, message, False, target, target)
    if kind == "tls":
        return r.TlsCertResult(False, False, None, None, None, None, None, None, None, message,
                               address)  # fmt: skip
    return r.PluginResult(plugin[0] or kind, plugin[1], False, None, message, {})


_VARIANT = {"ping": r.Ping, "trace": r.Traceroute, "tcp": r.TcpConnect, "udp": r.UdpConnect,
            "http": r.HttpGet, "tls": r.TlsCertificate}  # fmt: skip


def make_record(kind: str, ctx: ProbeContext, target: str, family: int | None, sw: Stopwatch,
                payload: r.Payload) -> r.MonitoringResult:  # fmt: skip
    """The result of ``kind`` for ``payload``: the envelope from ``ctx`` and ``sw``."""
    cls: Any = _VARIANT.get(kind, r.Plugin)
    fam = family if family in (4, 6) else None
    record: r.MonitoringResult = cls(agent=ctx.agent, check=ctx.check, target=target, family=fam,
                                     started_at=sw.started_at, duration_ms=sw.elapsed_ms(),
                                     result=payload)  # fmt: skip
    return record


class ProbeRegistry:
    """Built-in probe kinds plus plugins (entry point group ``meshmon.probes``)."""

    def __init__(self, plugins: Mapping[str, ProbePlugin] | None = None, *,
                 load_entry_points: bool = True) -> None:  # fmt: skip
        self.plugins: dict[str, ProbePlugin] = {}
        self.plugin_errors: dict[str, str] = {}
        """Plugins that failed to load: kind → why (checks of that kind report it)."""
        if load_entry_points:
            self.load_entry_points()
        for name, plugin in (plugins or {}).items():
            self.add_plugin(name, plugin)

    @property
    def kinds(self) -> list[str]:
        """Every kind a check may name."""
        return [*BUILTIN_KINDS, *sorted(self.plugins)]

    def add_plugin(self, kind: str, plugin: ProbePlugin) -> None:
        """Register a plugin object under ``kind``.

        Raises:
            ValueError: ``kind`` is a built-in kind or lacks ``name``/``version``/``probe``.
        """
        if kind in BUILTIN_KINDS:
            raise ValueError(f"plugin kind {kind!r} clashes with a built-in probe; rename it")
        for attr in ("name", "version", "probe"):
            if not hasattr(plugin, attr):
                raise ValueError(f"plugin {kind!r} has no {attr!r}; see meshmon.probes.plugin")
        self.plugins[kind] = plugin

    def load_entry_points(self) -> None:
        """Load every entry point of group ``meshmon.probes``; failures go to plugin_errors."""
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
                plugin = obj() if inspect.isclass(obj) else obj
                self.add_plugin(ep.name, typing.cast(ProbePlugin, plugin))
                log.info("probe plugin %s loaded from %s", ep.name, ep.value)
            except Exception as exc:
                self.plugin_errors[ep.name] = f"{type(exc).__name__}: {exc}"
                log.warning("probe plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)

    def schema(self, kind: str) -> ParamSchema | None:
        """The params and target syntax ``kind`` accepts; ``None`` if no such kind is loaded."""
        if kind in SCHEMAS:
            return SCHEMAS[kind]
        plugin = self.plugins.get(kind)
        return None if plugin is None else plugin_schema(plugin)

    def check(self, kind: str, targets: Sequence[str], params: Mapping[str, Any],
              timeout: float) -> list[Issue]:  # fmt: skip
        """Every problem with a check's kind, params and static targets. Pure: no traffic.

        Returns:
            ``(key, problem)`` pairs, keys relative to the check (``kind``, ``params.count``,
            ``targets[1]``); empty when the check can run as written.
        """
        try:
            schema = self.schema(kind)
        except ValueError as exc:
            return [("kind", str(exc))]
        if schema is None:
            if kind in self.plugin_errors:
                return [("kind", f"the {kind!r} probe plugin is installed but failed to load "
                                 f"({self.plugin_errors[kind]}); fix or reinstall it")]  # fmt: skip
            close = difflib.get_close_matches(kind, self.kinds, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            plugins = f" (plugins: {', '.join(sorted(self.plugins))})" if self.plugins else ""
            choices = ", ".join(BUILTIN_KINDS)
            return [("kind", f"{kind!r} is not a probe kind; {hint}choose one of {choices}, "
                             f"or install a plugin{plugins}")]  # fmt: skip
        issues = validate_params(kind, schema, params, timeout)
        for i, target in enumerate(targets):
            try:
                problem = schema.check_target(target, params)
            except Exception as exc:  # a plugin's rule must not break config loading
                problem = f"the {kind} plugin's target check raised {type(exc).__name__}: {exc}"
            if problem:
                issues.append((f"targets[{i}]", problem))
        return issues

    async def run(self, kind: str, target: str, params: Mapping[str, Any],
                  timeout: float,  # noqa: ASYNC109 - a check's timeout gives an error result
                  context: ProbeContext) -> list[r.MonitoringResult]:  # fmt: skip
        """Run one check on one target; see :func:`run_probe`."""
        if kind in BUILTIN_KINDS:
            return await _run_builtin(kind, target, params, timeout, context)
        sw = Stopwatch()
        plugin = self.plugins.get(kind)
        if plugin is None:
            why = self.plugin_errors.get(kind)
            msg = (f"plugin {kind!r} failed to load: {why}" if why else
                   f"unknown probe kind {kind!r}; known: {', '.join(self.kinds)}")  # fmt: skip
            return [make_record(kind, context, target, None, sw, error_payload(kind, msg, None))]
        payload = await _run_plugin(kind, plugin, target, params, timeout, context)
        return [make_record(kind, context, target, None, sw, payload)]


def plugin_schema(plugin: ProbePlugin) -> ParamSchema:
    """What a plugin declares it accepts (see :mod:`meshmon.probes.plugin`).

    Raises:
        ValueError: the plugin's ``params`` declaration is not a mapping of
            :class:`~meshmon.probes.params.Param`.
    """
    declared = getattr(plugin, "params", None)
    if isinstance(declared, ParamSchema):
        return declared
    check_target = getattr(plugin, "check_target", None)
    target = check_target if callable(check_target) else any_target
    if declared is None:
        return ParamSchema(target=target, strict=False)
    if not isinstance(declared, Mapping) or not all(
        isinstance(v, Param) for v in declared.values()
    ):
        raise ValueError(f"the {getattr(plugin, 'name', '?')} plugin declares params that are "
                         "not a table of meshmon.probes.params.Param; fix the plugin")
    return ParamSchema(params=dict(declared), target=target)


async def _run_plugin(kind: str, plugin: ProbePlugin, target: str, params: Mapping[str, Any],
                      timeout: float,  # noqa: ASYNC109 - expiry gives an error result
                      ctx: ProbeContext) -> r.PluginResult:  # fmt: skip
    name, version = str(getattr(plugin, "name", kind)), str(getattr(plugin, "version", ""))
    request = PluginRequest(target, dict(params), timeout, ctx.agent, ctx.check, name, version)
    out: Any = None
    with trio.move_on_after(timeout) as scope:
        try:
            fn: Callable[[PluginRequest], Any] = plugin.probe
            if inspect.iscoroutinefunction(fn):
                out = await fn(request)
            else:
                out = await trio.to_thread.run_sync(fn, request, abandon_on_cancel=True)
                if inspect.isawaitable(out):
                    out = await out
        except Exception as exc:
            log.warning("probe plugin %s raised on %s: %r", kind, target, exc)
            why = f"plugin {name} raised {type(exc).__name__}: {exc}"
            return r.PluginResult(name, version, False, None, why, {})
    if scope.cancelled_caught:
        return r.PluginResult(name, version, False, None,
                              f"plugin {name} timed out after {timeout:g}s", {})  # fmt: skip
    if not isinstance(out, r.PluginResult):
        return r.PluginResult(name, version, False, None, f"plugin {name} returned "
                              f"{type(out).__name__}, not PluginResult", {})  # fmt: skip
    try:  # the store must be able to encode it
        r.encode_result(r.Plugin(agent="", check="", target="", family=None, started_at=0.0,
                                 duration_ms=0.0, result=out))  # fmt: skip
    except Exception as exc:
        why = f"plugin {name} returned data that cannot be stored: {exc}"
        return r.PluginResult(name, version, False, out.response_time_ms_, why, {})
    return out


SCHEMAS: dict[str, ParamSchema] = {"ping": ping_mod.PARAMS, "trace": trace_mod.PARAMS,
                                   "tcp": tcp_mod.PARAMS, "udp": udp_mod.PARAMS,
                                   "http": http_mod.PARAMS, "tls": tls_mod.PARAMS}  # fmt: skip
"""The declared params and target syntax of each built-in kind (beside each probe's code)."""

KNOWN_PARAMS: dict[str, frozenset[str]] = {k: frozenset(s.params) for k, s in SCHEMAS.items()}
"""Params each built-in kind understands; any other key is an error (usually a typo)."""


def check_params(kind: str, params: Mapping[str, Any], timeout: float = math.inf) -> None:
    """Reject params a built-in kind does not accept (unknown keys, types, ranges, timing).

    Plugins' params are left to the plugin here; ``config check`` applies what they declare.

    Raises:
        ParamError: naming the first wrong key and what is allowed.
    """
    schema = SCHEMAS.get(kind)
    if schema is None:
        return
    issues = validate_params(kind, dataclasses.replace(schema, parse=None), params, timeout)
    if issues:
        key, problem = issues[0]
        raise ParamError(f"{key}: {problem}")


def _port(kind: str, params: Mapping[str, Any], target_port: int | None) -> int:
    default = {"tls": 443, "udp": DEFAULT_ECHO_PORT if params.get("mode") == "echo" else None}
    port = base.param(params, "port", int, target_port or default.get(kind))
    if port is None:
        raise ParamError(f"a {kind} check needs a port: params.port or a host:port target")
    if not 1 <= port <= 65535:
        raise ParamError(f"params.port must be 1-65535, not {port}")
    return int(port)


async def _run_builtin(kind: str, target: str, params: Mapping[str, Any],
                       timeout: float,  # noqa: ASYNC109 - expiry gives an error result
                       ctx: ProbeContext) -> list[r.MonitoringResult]:  # fmt: skip
    sw = Stopwatch()
    try:
        check_params(kind, params, timeout)
        choice = base.family_choice(params)
        if kind == "http":
            problem = http_mod.PARAMS.check_target(target, params)  # urlsplit raises on some
            if problem:
                raise ParamError(f"target {problem}")
            return await _run_http(target, params, timeout, ctx, choice, sw)
        host, target_port = base.split_host_port(target, None)
        port = _port(kind, params, target_port) if kind in ("tcp", "udp", "tls") else 0
        runner = _prepare(kind, params, timeout, ctx, host, port)
        addresses = await base.resolve(host, choice)
    except ProbeError as exc:
        return [make_record(kind, ctx, target, None, sw, error_payload(kind, str(exc), None,
                                                                    target=target))]  # fmt: skip
    out: list[r.MonitoringResult | None] = [None] * len(addresses)

    async def one(i: int, family: int, address: str | None, why: str | None) -> None:
        fsw = Stopwatch() if i else sw
        payload: r.Payload | None = None
        if address is None:
            payload = error_payload(kind, why or "no address", None, port)
        else:
            with trio.move_on_after(timeout + GRACE):
                try:
                    payload = await runner(address, family)
                except ProbeError as exc:
                    payload = error_payload(kind, str(exc), address, port)
                except Exception as exc:
                    log.exception("%s probe of %s failed unexpectedly", kind, target)
                    why = f"internal error in the {kind} probe: {type(exc).__name__}: {exc}"
                    payload = error_payload(kind, why, address, port)
            if payload is None:
                payload = error_payload(kind, f"did not finish within {timeout:g}s", address, port)
        out[i] = make_record(kind, ctx, target, family, fsw, payload)

    if len(addresses) == 1:  # the common case: no nursery (it costs more than the probe)
        await one(0, *addresses[0])
    else:
        async with trio.open_nursery() as nursery:
            for i, (family, address, why) in enumerate(addresses):
                nursery.start_soon(one, i, family, address, why)
    return [x for x in out if x is not None]


def _prepare(kind: str, params: Mapping[str, Any], timeout: float, ctx: ProbeContext, host: str,
             port: int) -> Callable[[str, int], Any]:  # fmt: skip
    """Validate params now (errors before any traffic); return ``runner(address, family)``."""
    if kind == "ping":
        pp = PingParams.from_params(params, timeout)
        return lambda a, f: ping(ctx.icmp, a, f, pp)
    if kind == "trace":
        tp = TraceParams.from_params(params, timeout)
        if tp.protocol == "icmp" and ctx.icmp is None:
            raise ProbeError("an ICMP trace needs the ICMP engine; or set params.protocol = "
                             "\"udp\" or \"tcp\"")  # fmt: skip
        return lambda a, f: trace(ctx.icmp, a, f, tp, timeout)
    if kind == "tcp":
        return lambda a, f: tcp_connect(a, f, port, timeout)
    if kind == "udp":
        up = UdpParams.from_params(params)
        wait = timeout - (up.count - 1) * up.interval
        if wait <= 0:
            raise ParamError("count × interval does not fit the timeout; lower count/interval")
        return lambda a, f: udp_probe(a, f, port, up, wait, ctx.udp_codec)
    if kind == "tls":
        tp2 = TlsParams.from_params(params)
        return lambda a, f: tls_check(a, f, port, host, tp2, timeout, time.time())
    raise ProbeError(f"unknown probe kind {kind!r}")  # pragma: no cover


async def _run_http(target: str, params: Mapping[str, Any],
                    timeout: float,  # noqa: ASYNC109 - expiry gives an error result
                    ctx: ProbeContext, choice: base.FamilyChoice,
                    sw: Stopwatch) -> list[r.MonitoringResult]:  # fmt: skip
    hp = HttpParams.from_params(params)
    url = target if "://" in target else f"http://{target}/"
    host, _ = base.split_host_port(url, None)
    families: list[int | None]
    if choice == "both":
        families = [4, 6]
    elif choice in ("4", "6"):
        families = [int(choice)]
    else:
        families = [None]
    out: list[r.MonitoringResult] = []
    for i, fam in enumerate(families):  # sequential: a site measured twice at once skews both
        fsw = Stopwatch() if i else sw
        payload: r.Payload
        server: str | None
        literal_family = base.literal_family(host)
        if fam and literal_family and fam != literal_family:
            why = f"{host} is an IPv{literal_family} address: nothing to probe over IPv{fam}"
            out.append(make_record("http", ctx, target, fam, fsw, error_payload("http", why, None,
                                                                              target=url)))
            continue
        try:
            with trio.move_on_after(timeout + GRACE):
                payload, server = await http_get(url, hp, timeout, fam)
        except Exception as exc:
            log.exception("http probe of %s failed unexpectedly", url)
            payload, server = error_payload("http", f"internal error: {exc}", None,
                                            target=url), None  # fmt: skip
        used = fam or literal_family or None
        if used is None and server:
            used = 6 if ":" in server else 4
        out.append(make_record("http", ctx, target, used, fsw, payload))
    return out


async def run_probe(kind: str, target: str, params: Mapping[str, Any],
                    timeout: float,  # noqa: ASYNC109 - expiry gives an error result, not a raise
                    context: ProbeContext, registry: ProbeRegistry | None = None,
                    ) -> list[r.MonitoringResult]:  # fmt: skip
    """Run one check against one target and return its result(s); never raises for probe faults.

    Args:
        kind: ``ping``, ``trace``, ``tcp``, ``udp``, ``http``, ``tls`` or a plugin kind.
        target: host, ``host:port``, ``[v6]:port`` or URL, as configured.
        params: the check's ``params`` (validated here; bad ones give an error result).
        timeout: seconds; every result is produced within it (plus a small grace).
        context: agent name, check name, the ICMP engine, the UDP codec.
        registry: where plugins come from; a module-wide default loading entry points once.

    Returns:
        One result, or one per family when ``params.family == "both"``.
    """
    reg = registry if registry is not None else default_registry()
    return await reg.run(kind, target, params, timeout, context)


_DEFAULT: list[ProbeRegistry] = []


def default_registry() -> ProbeRegistry:
    """The process-wide registry (entry points loaded on first use)."""
    if not _DEFAULT:
        _DEFAULT.append(ProbeRegistry())
    return _DEFAULT[0]
