"""Probes: ICMP engine, ping, mtr-style trace, TCP, UDP (+ echo responder), HTTP, TLS, plugins.

The scheduler calls :func:`run_probe`; an agent starts one :class:`IcmpEngine` and one
:class:`UdpEchoResponder` in its nursery and passes them in a :class:`ProbeContext`.
"""

from meshmon.probes.base import (
    PLAIN,
    ParamError,
    ProbeContext,
    ProbeError,
    ResolveError,
    UdpCodec,
)
from meshmon.probes.batch import run_probe_batch, run_probe_batch_encoded
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
from meshmon.probes.udp import DEFAULT_ECHO_PORT, UdpEchoResponder

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
