"""Sealed datagrams: AEAD with pairwise keys from certified node keys (see :mod:`.seal`)."""

from meshmon.wire.seal import (
    HEADER_LEN,
    MAX_DATAGRAM,
    MAX_PLAINTEXT,
    OVERHEAD,
    Keyring,
    Opened,
    SealConfig,
    SealError,
    node_id_of,
)

__all__ = [
    "HEADER_LEN",
    "MAX_DATAGRAM",
    "MAX_PLAINTEXT",
    "OVERHEAD",
    "Keyring",
    "Opened",
    "SealConfig",
    "SealError",
    "node_id_of",
]
