"""The CLI as a user runs it: real subprocesses on files in a temporary folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

MESHMON = [sys.executable, "-m", "meshmon"]


def run(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*MESHMON, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if ok:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0, proc.stdout
    return proc


def test_help_lists_the_command_groups(tmp_path: Path) -> None:
    out = run("--help", cwd=tmp_path).stdout
    for group in ("ca", "cert", "config", "agent", "demo"):
        assert f" {group} " in out


def test_ca_cert_lifecycle(tmp_path: Path) -> None:
    run("ca", "init", "ca", cwd=tmp_path)
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    out = run("cert", "issue", "--ca", "ca", "--name", "web-1", "--tag", "web", "--ip",
              "127.0.0.2", "--out", "web-1", cwd=tmp_path).stdout
    assert "issued" in out
    for f in ("node.key", "node.crt", "ca.crt", "crl.pem"):
        assert (tmp_path / "web-1" / f).exists()
    assert not (tmp_path / "ca" / "node.key").exists()  # the key stays in the node's folder
    listing = json.loads(run("cert", "list", "--ca", "ca", "--json", cwd=tmp_path).stdout)
    assert [(r["name"], r["revoked"]) for r in listing] == [("web-1", False)]
    run("cert", "revoke", "web-1", "--ca", "ca", cwd=tmp_path)
    assert "revoked" in run("cert", "list", "--ca", "ca", cwd=tmp_path).stdout
    err = run("cert", "revoke", "ghost", "--ca", "ca", cwd=tmp_path, ok=False).stderr
    assert "no certificate was issued to 'ghost'" in err


def test_cert_issue_without_ca_says_how_to_make_one(tmp_path: Path) -> None:
    err = run("cert", "issue", "--ca", "nope", "--name", "a", "--out", "a", cwd=tmp_path,
              ok=False).stderr
    assert "meshmon ca init nope" in err


def test_config_check_prints_effective_config_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[node]\nname = "n1"\n[listen]\naddress = "127.0.0.2"\n')
    out = run("config", "check", str(good), "--skip-files", cwd=tmp_path).stdout
    assert "OK" in out and 'fsync_interval = "200ms"' in out
    data = json.loads(run("config", "check", str(good), "--json", "--skip-files",
                          cwd=tmp_path).stdout)
    assert data["listen"]["udp_port"] == 7946
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nname = "n1"\n[[checks]]\nname = "c"\nkind = "ping"\n'
                   'interval = "often"\ntargets = ["x"]\n')
    err = run("config", "check", str(bad), cwd=tmp_path, ok=False).stderr
    assert f"{bad}: checks[0].interval" in err and "not a duration" in err


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_agent_runs_prints_identity_and_stops_on_sigterm(tmp_path: Path, fmt: str) -> None:
    run("ca", "init", "ca", cwd=tmp_path)
    run("cert", "issue", "--ca", "ca", "--name", "n1", "--out", "n1", cwd=tmp_path)
    cfg = tmp_path / "n1" / "agent.toml"
    cfg.write_text('[node]\nname = "n1"\ndata_dir = "data"\n[listen]\naddress = "127.0.0.1"\n'
                   'udp_port = 0\ntcp_port = 0\n[tls]\nca_cert = "ca.crt"\ncert = "node.crt"\n'
                   'key = "node.key"\ncrl = "crl.pem"\n')
    proc = subprocess.Popen([*MESHMON, "agent", "run", "-c", str(cfg), "--log-format", fmt],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "agent up" in line and "node n1" in line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    if fmt == "json":
        records = [json.loads(line) for line in err.splitlines()]
        assert any(r["msg"].startswith("agent n1 stopped") for r in records)
    else:
        assert "agent n1 stopped" in err


def test_agent_refuses_mismatched_name(tmp_path: Path) -> None:
    run("ca", "init", "ca", cwd=tmp_path)
    run("cert", "issue", "--ca", "ca", "--name", "n1", "--out", "n1", cwd=tmp_path)
    cfg = tmp_path / "n1" / "agent.toml"
    cfg.write_text('[node]\nname = "other"\n[listen]\naddress = "127.0.0.1"\n[tls]\n'
                   'ca_cert = "ca.crt"\ncert = "node.crt"\nkey = "node.key"\ncrl = "crl.pem"\n')
    err = run("agent", "run", "-c", str(cfg), cwd=tmp_path, ok=False).stderr
    assert f"error: {cfg}: node.name: 'other' does not match the certificate" in err
    assert "Traceback" not in err
