"""meshmon: a peer-to-peer mesh of network monitoring agents.

The public, embeddable API is re-exported here; implementation modules may change. Embedding an
agent in a trio program::

    async with meshmon.open_agent(config) as agent:
        agent.add_check(meshmon.CheckConfig(name="lo", kind="ping", targets=("127.0.0.1",)))
        async for result in agent.subscribe(check="lo"):
            ...

(see :mod:`meshmon.embed`). The names are re-exported lazily (PEP 562): ``import meshmon``
loads nothing but the version, and each module is imported the first time one of its names is
used, so a program (or the agent's own start) pays only for what it uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from meshmon.version import __version__

if TYPE_CHECKING:
    from meshmon.agent import Agent
    from meshmon.config import (
        AgentConfig,
        CheckConfig,
        ListenConfig,
        MeshConfig,
        NodeConfig,
        StoreConfig,
        TlsConfig,
        config_from_dict,
        load_config,
    )
    from meshmon.configload import ConfigError, ConfigErrors
    from meshmon.embed import EmbeddedAgent, ResultStream, UnknownCheckError, open_agent
    from meshmon.pki import CertificateError, PkiError, Trust, load_identity
    from meshmon.results import (
        HttpGet,
        HttpGetResult,
        MonitoringResult,
        Ping,
        PingResult,
        Plugin,
        PluginResult,
        TcpConnect,
        TcpConnectResult,
        TlsCertificate,
        TlsCertResult,
        Traceroute,
        TracerouteHop,
        TracerouteResult,
        UdpConnect,
        UdpConnectResult,
    )
    from meshmon.startup import AgentError

_WHERE = {
    "meshmon.agent": ("Agent",),
    "meshmon.config": ("AgentConfig", "CheckConfig", "ListenConfig", "MeshConfig", "NodeConfig",
                       "StoreConfig", "TlsConfig", "config_from_dict", "load_config"),
    "meshmon.configload": ("ConfigError", "ConfigErrors"),
    "meshmon.embed": ("EmbeddedAgent", "ResultStream", "UnknownCheckError", "open_agent"),
    "meshmon.pki": ("CertificateError", "PkiError", "Trust", "load_identity"),
    "meshmon.results": ("HttpGet", "HttpGetResult", "MonitoringResult", "Ping", "PingResult",
                        "Plugin", "PluginResult", "TcpConnect", "TcpConnectResult",
                        "TlsCertResult", "TlsCertificate", "Traceroute", "TracerouteHop",
                        "TracerouteResult", "UdpConnect", "UdpConnectResult"),
    "meshmon.startup": ("AgentError",),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:  # a submodule (``from meshmon import pki``) is found by import
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "CertificateError",
    "CheckConfig",
    "ConfigError",
    "ConfigErrors",
    "EmbeddedAgent",
    "HttpGet",
    "HttpGetResult",
    "ListenConfig",
    "MeshConfig",
    "MonitoringResult",
    "NodeConfig",
    "Ping",
    "PingResult",
    "PkiError",
    "Plugin",
    "PluginResult",
    "ResultStream",
    "StoreConfig",
    "TcpConnect",
    "TcpConnectResult",
    "TlsCertResult",
    "TlsCertificate",
    "TlsConfig",
    "Traceroute",
    "TracerouteHop",
    "TracerouteResult",
    "Trust",
    "UdpConnect",
    "UdpConnectResult",
    "UnknownCheckError",
    "__version__",
    "config_from_dict",
    "load_config",
    "load_identity",
    "open_agent",
]
