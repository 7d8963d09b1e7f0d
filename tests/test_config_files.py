"""``load_checked``: the files a config names, checked as the agent will use them.

Every error names the config file, the key (``tls.key``, ``node.tags``...) and the fix, in one
line, and all of them come at once.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from meshmon import pki
from meshmon.configcheck import load_checked
from meshmon.configload import ConfigError
from tests.conftest import Mesh, Node


def write_config(tmp_path: Path, node: Node, name: str | None = None, extra: str = "",
                 tags: str = "", crl: Path | None = None) -> Path:  # fmt: skip
    path = tmp_path / "agent.toml"
    path.write_text(f"""\
[node]
name = "{name or node.name}"
data_dir = "{tmp_path / 'data'}"
{tags}
[listen]
address = "127.0.0.1"
[tls]
ca_cert = "{node.folder / 'ca.crt'}"
cert = "{node.cert}"
key = "{node.key}"
crl = "{crl or node.folder / 'crl.pem'}"
{extra}
""")
    return path


def errors_of(path: Path) -> dict[str, str]:
    """key → the one-line error, for a config that must be refused."""
    with pytest.raises(ConfigError) as info:
        load_checked(path)
    out = {}
    for error in info.value.errors:  # type: ignore[attr-defined]
        line = str(error)
        assert "\n" not in line and line.startswith(f"{path}: {error.key}: "), line
        out[error.key] = line
    return out


def test_valid_files_pass_and_the_certificate_gives_the_tags(tmp_path: Path, mesh: Mesh) -> None:
    node = mesh.node("n1", tags=("dc1", "web"))
    cfg = load_checked(write_config(tmp_path, node))
    assert cfg.node.tags == ("dc1", "web")  # placement uses the certificate's tags
    cfg = load_checked(write_config(tmp_path, node, tags='tags = ["web", "dc1"]'))
    assert set(cfg.node.tags) == {"dc1", "web"}


def test_config_tags_that_differ_from_the_certificate_are_refused_naming_both(
        tmp_path: Path, mesh: Mesh) -> None:  # fmt: skip
    node = mesh.node("n1", tags=("dc1",))
    errors = errors_of(write_config(tmp_path, node, tags='tags = ["dc1", "web"]'))
    assert list(errors) == ["node.tags"]
    assert "['dc1', 'web'] do not match the certificate's tags ['dc1']" in errors["node.tags"]
    assert str(node.cert) in errors["node.tags"]


def test_name_must_match_the_certificate(tmp_path: Path, mesh: Mesh) -> None:
    node = mesh.node("n1")
    errors = errors_of(write_config(tmp_path, node, name="n2"))
    assert list(errors) == ["node.name"]
    assert "'n2' does not match the certificate" in errors["node.name"]
    assert "which is for 'n1'; set node.name = \"n1\"" in errors["node.name"]


def test_missing_certificate(tmp_path: Path, mesh: Mesh) -> None:
    node = mesh.node("n1")
    node.cert.unlink()
    errors = errors_of(write_config(tmp_path, node))
    assert list(errors) == ["tls.cert"]
    assert f"certificate {node.cert} does not exist" in errors["tls.cert"]


def test_key_readable_by_others(tmp_path: Path, mesh: Mesh) -> None:
    node = mesh.node("n1")
    node.key.chmod(0o644)
    errors = errors_of(write_config(tmp_path, node))
    assert list(errors) == ["tls.key"]
    assert "accessible by group/others (mode 644); run: chmod 600" in errors["tls.key"]


def test_garbage_certificate(tmp_path: Path, mesh: Mesh) -> None:
    node = mesh.node("n1")
    node.cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    errors = errors_of(write_config(tmp_path, node))
    assert list(errors) == ["tls.cert"]
    assert "is not a PEM certificate" in errors["tls.cert"]


def test_certificate_from_another_ca(tmp_path: Path, make_mesh: Callable[[str], Mesh]) -> None:
    ours, theirs = make_mesh("ours"), make_mesh("theirs")
    node = theirs.node("n1")
    shutil.copy(ours.ca_cert, node.folder / "ca.crt")
    shutil.copy(ours.crl, node.folder / "crl.pem")
    errors = errors_of(write_config(tmp_path, node))
    assert list(errors) == ["tls.cert"]
    assert "was not issued by the mesh CA in" in errors["tls.cert"]
    assert "CN=ours CA" in errors["tls.cert"]


def test_crl_from_another_ca_and_ca_that_is_a_node_certificate(
        tmp_path: Path, make_mesh: Callable[[str], Mesh]) -> None:  # fmt: skip
    ours, theirs = make_mesh("ours"), make_mesh("theirs")
    node = ours.node("n1")
    errors = errors_of(write_config(tmp_path, node, crl=theirs.crl))
    assert list(errors) == ["tls.crl"] and "not signed by the mesh CA" in errors["tls.crl"]
    shutil.copy(node.cert, node.folder / "ca.crt")
    errors = errors_of(write_config(tmp_path, node))
    assert "tls.ca_cert" in errors and "is not a CA certificate" in errors["tls.ca_cert"]


def test_expired_certificate(tmp_path: Path, mesh: Mesh) -> None:
    node = mesh.node("n1", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    errors = errors_of(write_config(tmp_path, node))
    assert list(errors) == ["tls.cert"] and " expired on " in errors["tls.cert"]


def test_revoked_certificate_by_the_crl_or_by_a_newer_cached_one(tmp_path: Path,
                                                                 mesh: Mesh) -> None:
    node = mesh.node("n1")
    stale_crl = node.folder / "crl.pem"
    pki.revoke(mesh.ca_dir, "n1")
    errors = errors_of(write_config(tmp_path, node, crl=mesh.crl))
    assert "is revoked by the CRL in tls.crl" in errors["tls.cert"]
    # the agent also trusts the newest CRL it learnt from its peers, cached in its data folder
    (tmp_path / "data").mkdir()
    shutil.copy(mesh.crl, tmp_path / "data" / "crl.pem")
    errors = errors_of(write_config(tmp_path, node, crl=stale_crl))
    assert "is revoked by the newer CRL #2 cached in" in errors["tls.cert"]


def test_ca_file_params_must_be_readable_ca_bundles(tmp_path: Path, mesh: Mesh) -> None:
    node = mesh.node("n1")
    (tmp_path / "junk.pem").write_text("junk")
    errors = errors_of(write_config(tmp_path, node, extra=f"""
[[checks]]
name = "h"
kind = "http"
targets = ["https://example.com/"]
params = {{ ca_file = "{tmp_path / 'missing.pem'}" }}
[[checks]]
name = "t"
kind = "tls"
targets = ["example.com"]
params = {{ ca_file = "{tmp_path / 'junk.pem'}" }}
[[checks]]
name = "ok"
kind = "tls"
targets = ["example.com"]
params = {{ ca_file = "{mesh.ca_cert}" }}
"""))
    assert list(errors) == ["checks[0].params.ca_file", "checks[1].params.ca_file"]
    assert "missing.pem does not exist" in errors["checks[0].params.ca_file"]
    assert "is not a readable PEM CA bundle" in errors["checks[1].params.ca_file"]


def test_file_errors_come_with_the_other_errors(tmp_path: Path, mesh: Mesh) -> None:
    node = mesh.node("n1")
    node.key.chmod(0o640)
    node.cert.unlink()
    errors = errors_of(write_config(tmp_path, node, extra="""
[[checks]]
name = "p"
kind = "ping"
targets = ["h"]
params = { count = "lots" }
"""))
    assert list(errors) == ["checks[0].params.count", "tls.key", "tls.cert"]


def test_data_dir_that_cannot_be_created(tmp_path: Path, mesh: Mesh) -> None:
    node = mesh.node("n1")
    (tmp_path / "afile").write_text("")
    path = write_config(tmp_path, node)
    path.write_text(path.read_text().replace(str(tmp_path / "data"), str(tmp_path / "afile/d")))
    errors = errors_of(path)
    assert list(errors) == ["node.data_dir"] and "is not a folder" in errors["node.data_dir"]


def test_an_address_the_certificate_does_not_list_is_refused(tmp_path: Path, mesh: Mesh) -> None:
    node = mesh.node("n1", ips=("127.0.0.7",))
    errors = errors_of(write_config(tmp_path, node))
    assert list(errors) == ["listen.address"]
    assert "127.0.0.1 is not among the addresses of the certificate" in errors["listen.address"]
    assert "127.0.0.7" in errors["listen.address"]
    path = write_config(tmp_path, node)
    path.write_text(path.read_text().replace('[listen]\n', '[listen]\nadvertise = "127.0.0.9"\n'))
    errors = errors_of(path)
    assert list(errors) == ["listen.advertise"] and "127.0.0.9 is not among" in str(errors)
