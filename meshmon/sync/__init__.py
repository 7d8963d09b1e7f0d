"""Lazy, batched, resumable upload of results to an optional aggregator.

:class:`Uploader` is the driver (:mod:`.uploader`), its decisions are pure functions
(:mod:`.policy`), and :mod:`.client` speaks HTTPS to aggregators over the mesh's mutual TLS,
accepting only servers whose certificate carries the ``aggregator`` tag.

The names are re-exported lazily (PEP 562): an agent in a serverless mesh imports
:mod:`.policy` alone and never loads the HTTP client (httpx, ~3 MiB and ~20 ms at start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshmon.sync.client import AGGREGATOR_TAG, AggregatorClient, aggregator_context
    from meshmon.sync.policy import AggregatorUrls
    from meshmon.sync.uploader import CURSOR, Uploader

_WHERE = {
    "meshmon.sync.client": ("AGGREGATOR_TAG", "AggregatorClient", "aggregator_context"),
    "meshmon.sync.policy": ("AggregatorUrls",),
    "meshmon.sync.uploader": ("CURSOR", "Uploader"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:  # a submodule (``from meshmon.sync import client``) is found by import
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "AGGREGATOR_TAG",
    "CURSOR",
    "AggregatorClient",
    "AggregatorUrls",
    "Uploader",
    "aggregator_context",
]
