"""Probes: ICMP engine, ping, mtr-style trace, TCP, UDP (+ echo responder), HTTP, TLS, plugins.

The scheduler calls :func:`run_probe`; an agent starts one :class:`IcmpEngine` and one
:class:`UdpEchoResponder` in its nursery and passes them in a :class:`ProbeContext`.

The names below are re-exported lazily (PEP 562): ``import meshmon.probes.params`` (as the
config loader does) or an agent without checks loads none of the probe kinds, their result
models or the HTTP client; each module is imported the first time one of its names is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshmon.probes.base import (
        PLAIN,
        ParamError,
        ProbeContext,
        ProbeError,
        ResolveError,
        UdpCodec,
    )
    from meshmon.probes.batch import run_probe_batch, run_probe_batch_encoded
    from meshmon.probes.echo_responder import DEFAULT_ECHO_PORT, UdpEchoResponder
    from meshmon.probes.icmp import (
        Echo,
        IcmpConfig,
        IcmpEngine,
        IcmpEngineError,
        IcmpError,
        IcmpPermissionError,
    )
    from meshmon.probes.plugin import PluginRequest, ProbePlugin
    from meshmon.probes.registry import (
        BUILTIN_KINDS,
        ENTRY_POINT_GROUP,
        ProbeRegistry,
        default_registry,
        run_probe,
    )
    from meshmon.probes.services import run_probe_services

_WHERE = {
    "meshmon.probes.base": ("PLAIN", "ParamError", "ProbeContext", "ProbeError", "ResolveError",
                            "UdpCodec"),
    "meshmon.probes.icmp": ("Echo", "IcmpConfig", "IcmpEngine", "IcmpEngineError", "IcmpError",
                            "IcmpPermissionError"),
    "meshmon.probes.plugin": ("PluginRequest", "ProbePlugin"),
    "meshmon.probes.registry": ("BUILTIN_KINDS", "ENTRY_POINT_GROUP", "ProbeRegistry",
                                "default_registry", "run_probe"),
    "meshmon.probes.batch": ("run_probe_batch", "run_probe_batch_encoded"),
    "meshmon.probes.services": ("run_probe_services",),
    "meshmon.probes.echo_responder": ("DEFAULT_ECHO_PORT", "UdpEchoResponder"),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:  # a submodule (``from meshmon.probes import icmp``) is found by import
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "BUILTIN_KINDS",
    "DEFAULT_ECHO_PORT",
    "ENTRY_POINT_GROUP",
    "PLAIN",
    "Echo",
    "IcmpConfig",
    "IcmpEngine",
    "IcmpEngineError",
    "IcmpError",
    "IcmpPermissionError",
    "ParamError",
    "PluginRequest",
    "ProbeContext",
    "ProbeError",
    "ProbePlugin",
    "ProbeRegistry",
    "ResolveError",
    "UdpCodec",
    "UdpEchoResponder",
    "default_registry",
    "run_probe",
    "run_probe_batch",
    "run_probe_batch_encoded",
    "run_probe_services",
]
