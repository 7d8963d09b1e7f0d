"""Lazy, batched, resumable upload of results to an optional aggregator.

:class:`Uploader` is the driver (:mod:`.uploader`), its decisions are pure functions
(:mod:`.policy`), and :mod:`.client` speaks HTTPS to aggregators over the mesh's mutual TLS,
accepting only servers whose certificate carries the ``aggregator`` tag.
"""

from meshmon.sync.client import AGGREGATOR_TAG, AggregatorClient, aggregator_context
from meshmon.sync.policy import AggregatorUrls
from meshmon.sync.uploader import CURSOR, Uploader

__all__ = [
    "AGGREGATOR_TAG",
    "CURSOR",
    "AggregatorClient",
    "AggregatorUrls",
    "Uploader",
    "aggregator_context",
]
