"""The one validation an agent config passes before it runs: ``meshmon config check``, agent start
and reload (SIGHUP or a changed file) all call :func:`load_checked`.

Theory of operation
-------------------
:func:`~meshmon.config.load_config` checks the file itself: every key, type and range, probe
kinds (plugins included), each kind's params and the syntax of every target and seed. This
module adds what the file only names:

* the TLS files: present and readable; the key private (no group/other access), a PEM EC key
  and the certificate's; the CA a CA certificate, valid now; the CRL signed by it; the
  certificate issued by that CA, valid now, not revoked (by the configured CRL or a newer one
  the agent cached from its peers), for ``node.name`` and, if ``node.tags`` is given, with
  exactly those tags — the certificate's tags are what placement uses, so a config that
  disagrees with it is refused naming both;
* files named by check params (``ca_file``), the data folder and the control socket's path.

Every problem is one :class:`~meshmon.configload.ConfigError` line naming the file, the key
path and the fix; all of them are reported at once. Nothing here touches the network: a seed
that does not resolve or answer is a runtime warning (:mod:`meshmon.seeds`), not a config error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import ssl
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshmon import pki
from meshmon.config import (
    AgentConfig,
    CheckConfig,
    ListenConfig,
    NodeConfig,
    TlsConfig,
    load_config,
)
from meshmon.configload import ConfigError, ConfigErrors

Issue = tuple[str, str]
"""``(key path, problem)``."""

UNIX_SOCKET_MAX = 107
"""Bytes in a Unix socket path (``sun_path`` is 108 bytes with the terminating NUL)."""


def load_checked(path: str | os.PathLike[str], environ: dict[str, str] | None = None, *,
                 files: bool = True, now: dt.datetime | None = None) -> AgentConfig:  # fmt: skip
    """Load ``path`` and check everything the agent will use; the effective config.

    Args:
        path: the agent's TOML file.
        environ: for the ``MESHMON_*`` path overrides (default ``os.environ``).
        files: also check the files the config names (TLS, ``ca_file``); ``False`` checks the
            file alone (CI, away from the node's secrets).
        now: the time certificates must be valid at (default: now).

    Returns:
        The config; ``node.tags`` filled in from the certificate when the file gives none.

    Raises:
        ConfigError: one problem (the file is missing or not TOML), or :class:`ConfigErrors`
            with every problem found, one line each.
    """
    source = str(path)
    errors: list[ConfigError] = []
    config: AgentConfig | None = None
    try:
        config = load_config(path, environ)
        sections: dict[str, Any] = {f.name: getattr(config, f.name)
                                    for f in dataclasses.fields(config)}  # fmt: skip
    except ConfigErrors as exc:
        errors, sections = list(exc.errors), exc.partial
    cert_tags: tuple[str, ...] | None = None
    if files:
        issues, cert_tags = check_files(sections, now)
        errors += [ConfigError(source, key, problem) for key, problem in issues]
    if errors or config is None:
        raise ConfigErrors(errors)
    if cert_tags and not config.node.tags:
        config = dataclasses.replace(config, node=dataclasses.replace(config.node,
                                                                      tags=cert_tags))
    return config


Tags = tuple[str, ...]


def check_files(sections: dict[str, Any],
                now: dt.datetime | None = None) -> tuple[list[Issue], Tags | None]:  # fmt: skip
    """Problems with the files named by the decoded ``sections`` of a config.

    Returns:
        The issues, and the certificate's tags (``None`` when it could not be read).
    """
    issues: list[Issue] = []
    tags: tuple[str, ...] | None = None
    node = sections.get("node")
    tls = sections.get("tls")
    if isinstance(tls, TlsConfig):
        tls_issues, tags = check_tls(tls, node if isinstance(node, NodeConfig) else None, now)
        issues += tls_issues
        listen = sections.get("listen")
        if isinstance(listen, ListenConfig) and not tls_issues:
            issues += _check_advertised(listen, tls.cert)
    if isinstance(node, NodeConfig):
        issues += _check_data_dir(node.data_dir)
        control = sections.get("control")
        socket = getattr(control, "socket", None) or node.data_dir / "control.sock"
        if len(os.fsencode(socket)) > UNIX_SOCKET_MAX:
            key = "control.socket" if getattr(control, "socket", None) else "node.data_dir"
            issues.append((key, f"the control socket {socket} is {len(os.fsencode(socket))} "
                                f"bytes long; a Unix socket path must be at most "
                                f"{UNIX_SOCKET_MAX}: set control.socket to a shorter path"))
    checks = sections.get("checks")
    if isinstance(checks, tuple):
        issues += _check_param_files(checks)
    return issues, tags


def _check_advertised(listen: ListenConfig, cert_path: Path) -> list[Issue]:
    """Peers refuse announcements of an address the certificate does not list (if it lists any)."""
    from meshmon.membership.identity import address_allowed, certificate_ips

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    address = listen.advertise_address
    if address_allowed(cert, address):
        return []
    key = "listen.advertise" if listen.advertise else "listen.address"
    listed = ", ".join(sorted(certificate_ips(cert)))
    return [(key, f"{address} is not among the addresses of the certificate {cert_path} "
                  f"({listed}), so every peer would refuse this agent's announcements; set "
                  f"{key} to one of them, or issue a certificate with --ip {address}")]


def _read(path: Path, key: str, what: str) -> tuple[bytes | None, Issue | None]:
    try:
        return path.read_bytes(), None
    except FileNotFoundError:
        return None, (key, f"{what} {path} does not exist; fix the path (or set it with "
                           f"MESHMON_{key.split('.')[-1].upper()})")  # fmt: skip
    except IsADirectoryError:
        return None, (key, f"{path} is a folder; point it at the {what}")
    except PermissionError:
        return None, (key, f"cannot read the {what} {path}: permission denied for uid "
                           f"{os.geteuid()} (the agent's user must be able to read it)")
    except OSError as exc:
        return None, (key, f"cannot read the {what} {path}: {exc.strerror or exc}")


def check_tls(tls: TlsConfig, node: NodeConfig | None,
              now: dt.datetime | None = None) -> tuple[list[Issue], Tags | None]:  # fmt: skip
    """Problems with the node's TLS files; and the certificate's tags when it is readable."""
    now = now or dt.datetime.now(dt.UTC)
    issues: list[Issue] = []
    ca = _load_ca(tls.ca_cert, now, issues)
    crl = _load_crl(tls.crl, ca, issues)
    key = _load_key(tls.key, issues)
    data, problem = _read(tls.cert, "tls.cert", "certificate")
    if problem:
        return [*issues, problem], None
    assert data is not None
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        issues.append(("tls.cert", f"{tls.cert} is not a PEM certificate; point tls.cert at the "
                                   "node.crt made by meshmon cert issue"))  # fmt: skip
        return issues, None
    name, tags = pki.node_name_of(cert), None
    if key is not None and not _same_key(cert, key):
        issues.append(("tls.key", f"{tls.key} is not the key of {tls.cert}; point tls.key at "
                                  "the node.key issued with that certificate"))  # fmt: skip
    if ca is not None:
        problem, tags = _verify(cert, name, tls, ca, crl, node, now)
        issues += [problem] if problem else []
    if node is not None:
        if name != node.name:
            issues.append(("node.name", f"{node.name!r} does not match the certificate "
                                        f"{tls.cert}, which is for {name!r}; set node.name = "
                                        f"\"{name}\", or issue a certificate with meshmon cert "
                                        f"issue --name {node.name}"))  # fmt: skip
        if tags is not None and node.tags and sorted(set(node.tags)) != sorted(set(tags)):
            issues.append(("node.tags", f"{list(node.tags)} do not match the certificate's tags "
                                        f"{list(tags)} in {tls.cert} (placement uses the "
                                        "certificate's); remove node.tags, or issue a "
                                        "certificate with those --tag options"))  # fmt: skip
    return issues, tags


def _load_ca(path: Path, now: dt.datetime, issues: list[Issue]) -> x509.Certificate | None:
    data, problem = _read(path, "tls.ca_cert", "CA certificate")
    if problem:
        issues.append(problem)
        return None
    assert data is not None
    try:
        ca = x509.load_pem_x509_certificate(data)
    except ValueError:
        issues.append(("tls.ca_cert", f"{path} is not a PEM certificate; point tls.ca_cert at "
                                      "the mesh CA's ca.crt"))  # fmt: skip
        return None
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        issues.append(("tls.ca_cert", f"{path} is not a CA certificate (is it a node's?); point "
                                      "tls.ca_cert at the mesh CA's ca.crt"))  # fmt: skip
        return None
    if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
        issues.append(("tls.ca_cert", f"the mesh CA {path} is not valid now (valid "
                                      f"{ca.not_valid_before_utc:%Y-%m-%d} to "
                                      f"{ca.not_valid_after_utc:%Y-%m-%d}); check the clock or "
                                      "renew the CA"))  # fmt: skip
    return ca


def _load_crl(path: Path, ca: x509.Certificate | None,
              issues: list[Issue]) -> x509.CertificateRevocationList | None:  # fmt: skip
    data, problem = _read(path, "tls.crl", "CRL")
    if problem:
        issues.append(problem)
        return None
    assert data is not None
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError:
        issues.append(("tls.crl", f"{path} is not a PEM CRL; copy crl.pem from the CA folder"))
        return None
    if ca is not None and not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        issues.append(("tls.crl", f"{path} is not signed by the mesh CA; copy crl.pem from the "
                                  "CA folder that issued tls.ca_cert"))  # fmt: skip
        return None
    return crl


def _load_key(path: Path, issues: list[Issue]) -> ec.EllipticCurvePrivateKey | None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0  # _read says what is wrong
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        issues.append(("tls.key", f"private key {path} is accessible by group/others (mode "
                                  f"{mode:o}); run: chmod 600 {path}"))  # fmt: skip
        return None
    data, problem = _read(path, "tls.key", "private key")
    if problem:
        issues.append(problem)
        return None
    assert data is not None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        issues.append(("tls.key", f"{path} is not an unencrypted PEM private key; point tls.key "
                                  "at the node.key made by meshmon cert issue"))  # fmt: skip
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        issues.append(("tls.key", f"{path} is not an EC key; issue one with meshmon cert issue"))
        return None
    return key


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def _verify(cert: x509.Certificate, name: str, tls: TlsConfig, ca: x509.Certificate,
            crl: x509.CertificateRevocationList | None, node: NodeConfig | None,
            now: dt.datetime) -> tuple[Issue | None, tuple[str, ...] | None]:  # fmt: skip
    """The certificate's problem against the CA, its validity and the CRLs; else its tags."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return ("tls.cert", f"{tls.cert} (for {name!r}) was not issued by the mesh CA in "
                            f"{tls.ca_cert} ({ca.subject.rfc4514_string()}); issue one with "
                            "meshmon cert issue from this mesh's CA folder"), None  # fmt: skip
    if now > cert.not_valid_after_utc:
        return ("tls.cert", f"{tls.cert} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} "
                            "UTC; issue a new one with meshmon cert issue"), None  # fmt: skip
    if now < cert.not_valid_before_utc:
        return ("tls.cert", f"{tls.cert} is not valid before "
                            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check this "
                            "host's clock"), None  # fmt: skip
    if crl is None:
        return None, None
    trust = pki.Trust(ca, crl)
    cached = "the CRL in tls.crl"
    if node is not None:  # the agent also trusts a newer CRL it learnt from peers
        try:
            if trust.update_crl(x509.load_pem_x509_crl((node.data_dir / "crl.pem").read_bytes())):
                cached = f"the newer CRL #{trust.crl_number} cached in {node.data_dir}/crl.pem"
        except (OSError, ValueError, pki.PkiError):
            pass
    if trust.is_revoked(cert.serial_number):
        return ("tls.cert", f"{tls.cert} (serial {cert.serial_number:x}) is revoked by "
                            f"{cached}; issue a new certificate with meshmon cert issue"), None
    try:
        return None, trust.verify(cert, now).tags
    except pki.CertificateError as exc:  # the checks above should have said it already
        return ("tls.cert", f"{tls.cert}: {exc}"), None


def _check_data_dir(path: Path) -> list[Issue]:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [("node.data_dir", f"{existing} is not a folder; point node.data_dir at one")]
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        return [("node.data_dir", f"{existing} is on a read-only file system; remount it "
                                  "read-write or choose another folder")]  # fmt: skip
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created ({existing} is " \
               "not writable)"  # fmt: skip
        return [("node.data_dir", f"{path} {what} for uid {os.geteuid()}; fix its owner or "
                                  "choose another folder")]  # fmt: skip
    return []


def _check_param_files(checks: Iterable[CheckConfig]) -> list[Issue]:
    issues: list[Issue] = []
    for i, check in enumerate(checks):
        ca_file = check.params.get("ca_file")
        if isinstance(ca_file, str):
            try:
                ssl.create_default_context().load_verify_locations(cafile=ca_file)
            except FileNotFoundError:
                issues.append((f"checks[{i}].params.ca_file", f"{ca_file} does not exist "
                               f"(relative paths are taken from the agent's working folder "
                               f"{os.getcwd()})"))  # fmt: skip
            except (OSError, ssl.SSLError) as exc:
                issues.append((f"checks[{i}].params.ca_file",
                               f"{ca_file} is not a readable PEM CA bundle ({exc})"))
    return issues
