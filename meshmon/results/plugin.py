"""The ``plugin`` payload: what a probe plugin returned."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PluginResult:
    """What a probe plugin returned (see :mod:`meshmon.probes.plugin`)."""

    plugin_name: str
    plugin_version: str
    success: bool
    response_time_ms_: float | None
    error: str | None
    data: dict[str, Any] = field(default_factory=dict)
    """Plugin-specific values; must be CBOR-encodable (str keys, plain values)."""

    def __hash__(self) -> int:
        return hash((self.plugin_name, self.plugin_version, self.success, self.error))

    def is_successful(self) -> bool:
        """As the plugin said."""
        return self.success

    def response_time_ms(self) -> float | None:
        """As the plugin said."""
        return self.response_time_ms_

    def error_message(self) -> str | None:
        """As the plugin said, or the engine's reason (raised, timed out)."""
        return self.error
