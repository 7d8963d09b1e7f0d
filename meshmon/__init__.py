"""meshmon: a peer-to-peer mesh of network monitoring agents.

The public, embeddable API is re-exported here; implementation modules may change.
"""

from meshmon.config import AgentConfig, CheckConfig, load_config
from meshmon.configload import ConfigError
from meshmon.pki import CertificateError, PkiError, Trust, load_identity
from meshmon.version import __version__

__all__ = [
    "AgentConfig",
    "CertificateError",
    "CheckConfig",
    "ConfigError",
    "PkiError",
    "Trust",
    "__version__",
    "load_config",
    "load_identity",
]
