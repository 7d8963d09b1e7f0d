"""The shipped example configs pass ``meshmon config check`` as the config schema evolves.

Each is checked twice: the file alone (``--skip-files``, as CI would) and, with a certificate
issued for its node (placed through the ``MESHMON_*`` overrides, as a container would), exactly
as the agent checks it at start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from meshmon import pki
from meshmon.config import load_config
from meshmon.configcheck import load_checked

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").rglob("*.toml"))
CONFIGS = [p for p in EXAMPLES if p.name != "pyproject.toml"]


def node_env(path: Path, tmp_path: Path) -> dict[str, str]:
    node = tomllib.loads(path.read_text())["node"]
    pki.init_ca(tmp_path / "ca")
    certs = tmp_path / "certs"
    pki.issue_cert(tmp_path / "ca", node["name"], certs, tags=node.get("tags", []))
    return {"MESHMON_CA_CERT": str(certs / pki.CA_CERT), "MESHMON_CERT": str(certs / pki.NODE_CERT),
            "MESHMON_KEY": str(certs / pki.NODE_KEY), "MESHMON_CRL": str(certs / pki.CRL_FILE),
            "MESHMON_DATA_DIR": str(tmp_path / "data")}  # fmt: skip


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_example_config_is_valid(path: Path, tmp_path: Path) -> None:
    config = load_config(path)
    assert config.node.name
    assert config.checks, "examples should show checks"
    checked = load_checked(path, environ=node_env(path, tmp_path))
    assert checked.checks == config.checks


@pytest.mark.parametrize("path", CONFIGS[:1], ids=lambda p: p.name)
def test_example_passes_the_cli_config_check(path: Path, tmp_path: Path) -> None:
    env = {**os.environ, **node_env(path, tmp_path)}
    for extra in ([], ["--skip-files"]):
        proc = subprocess.run([sys.executable, "-m", "meshmon", "config", "check", str(path),
                               *extra], capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        assert f"# {path}: OK" in proc.stdout
