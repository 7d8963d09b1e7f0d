"""Shared fixtures: a mesh CA and node identities in a temporary folder."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshmon import pki
from tests.pg import pg_db, pg_empty, pg_server  # noqa: F401 - fixtures: a real PostgreSQL


@dataclass
class Node:
    """A node's credentials on disk."""

    name: str
    folder: Path

    @property
    def cert(self) -> Path:
        return self.folder / pki.NODE_CERT

    @property
    def key(self) -> Path:
        return self.folder / pki.NODE_KEY

    def load(self, ca: Path, crl: Path) -> tuple[pki.NodeIdentity, pki.Trust]:
        return pki.load_identity(ca, self.cert, self.key, crl)


@dataclass
class Mesh:
    """A CA folder and a way to issue node certificates from it."""

    ca_dir: Path
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / pki.CA_CERT

    @property
    def crl(self) -> Path:
        return self.ca_dir / pki.CRL_FILE

    def node(self, name: str, tags: tuple[str, ...] = (), ips: tuple[str, ...] = ("127.0.0.1",),
             days: int = 30, not_before: dt.datetime | None = None) -> Node:
        folder = self.root / "nodes" / name
        pki.issue_cert(self.ca_dir, name, folder, tags=tags, ips=ips, days=days,
                       not_before=not_before)
        return Node(name, folder)

    def identity(self, node: Node) -> tuple[pki.NodeIdentity, pki.Trust]:
        return pki.load_identity(self.ca_cert, node.cert, node.key, self.crl)


@pytest.fixture
def make_mesh(tmp_path: Path) -> Callable[[str], Mesh]:
    """Factory: a fresh CA under tmp_path/<label>."""

    def make(label: str = "mesh") -> Mesh:
        root = tmp_path / label
        pki.init_ca(root / "ca", name=f"{label} CA")
        return Mesh(root / "ca", root)

    return make


@pytest.fixture
def mesh(make_mesh: Callable[[str], Mesh]) -> Mesh:
    """A fresh mesh CA."""
    return make_mesh("mesh")
