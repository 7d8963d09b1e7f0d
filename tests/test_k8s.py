"""The Kubernetes manifests in ``k8s/``, checked without a cluster.

Every object is validated by kubernetes-validate (strict: unknown fields are errors) against
one pinned Kubernetes version. What a schema cannot see is checked here: the references between
objects (volumes, ports, Services, Secrets the operator creates), that the configs they embed
pass the agent's (and the aggregator's) own checks with the environment the pods give them, and
that the certificate script the init containers run issues certificates those checks accept.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from aggregator.config import load_config as load_aggregator_config
from meshmon import pki
from meshmon.configcheck import load_checked

K8S = Path(__file__).resolve().parent.parent / "k8s"
README = Path(__file__).resolve().parent.parent / "README.md"
KUBERNETES = "1.31.0"
"""The Kubernetes version the manifests are validated against."""
NAMESPACE = "meshmon"
OPERATOR_MADE = {("Secret", "meshmon-ca"), ("ConfigMap", "meshmon-trust"), ("Secret", "meshmon-db")}
"""Objects the operator creates from the CA folder and the database password (README)."""
DOWNWARD = {"spec.nodeName": "node-1.example", "status.hostIP": "10.0.0.5"}
"""Sample values the kubelet fills in from the downward API."""
WORKLOADS = ("DaemonSet", "Deployment", "StatefulSet")


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]  # fmt: skip


def find(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for _, d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (c,) = [c for c in containers(workload["spec"]["template"]["spec"]) if c["name"] == name]
    return c


@pytest.mark.parametrize(("name", "doc"), documents(),
                         ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in documents()])
def test_manifest_is_valid(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    if doc["kind"] != "Namespace":
        assert doc["metadata"]["namespace"] == NAMESPACE


def test_validation_would_catch_a_misspelt_field() -> None:
    ds = find("DaemonSet", "meshmon-agent")
    ds["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="hostNetwrk"):
        kubernetes_validate.validate(ds, KUBERNETES, strict=True)


def test_references_between_objects_resolve() -> None:
    defined = {(d["kind"], d["metadata"]["name"]) for _, d in documents()} | OPERATOR_MADE
    for _, doc in documents():
        if doc["kind"] not in WORKLOADS:
            continue
        pod = doc["spec"]["template"]["spec"]
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
        if "serviceAccountName" in pod:
            assert ("ServiceAccount", pod["serviceAccountName"]) in defined
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in defined, volume
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in defined, volume
        mounted = {m["name"] for c in containers(pod) for m in c.get("volumeMounts", [])}
        claimed = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        assert mounted <= volumes.keys() | claimed, doc["metadata"]["name"]
        for c in containers(pod):
            assert ":" in c["image"] and not c["image"].endswith(":latest"), c["image"]
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                assert port is None or port in ports, (c["name"], probe)
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or ("Secret", ref["name"]) in defined, env
    for _, svc in documents():
        if svc["kind"] != "Service":
            continue
        pods = [d for _, d in documents() if d["kind"] in WORKLOADS
                and svc["spec"]["selector"].items()
                <= d["spec"]["template"]["metadata"]["labels"].items()]  # fmt: skip
        assert len(pods) == 1, svc["metadata"]["name"]
        pod_ports = {(p.get("name"), p["containerPort"]) for c in pods[0]["spec"]["template"]
                     ["spec"]["containers"] for p in c.get("ports", [])}  # fmt: skip
        for port in svc["spec"]["ports"]:
            target = port["targetPort"]
            assert any(target in (name, number) for name, number in pod_ports), port


def test_operator_made_objects_are_in_the_readme() -> None:
    text = README.read_text()
    for kind, name in OPERATOR_MADE:
        assert f"create {kind.lower()} generic {name}" in text or \
            f"create {kind.lower()} {name}" in text, (kind, name)  # fmt: skip


def agent_toml() -> str:
    text: str = find("ConfigMap", "meshmon-agent")["data"]["agent.toml"]
    return text


def pod_env(workload: dict[str, Any], name: str) -> dict[str, str]:
    """A container's environment as the kubelet would set it (downward API filled in)."""
    env = {}
    for var in container(workload, name).get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = DOWNWARD[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def test_agent_config_passes_the_agent_check_as_each_pod_sees_it(tmp_path: Path) -> None:
    ds = find("DaemonSet", "meshmon-agent")
    path = tmp_path / "agent.toml"
    path.write_text(agent_toml())
    env = pod_env(ds, "agent")
    config = load_checked(path, environ=env, files=False)
    assert config.node.name == "node-1.example" and config.listen.address == "10.0.0.5"
    # the seed list is the headless Service, on the port the agents listen on
    seed = find("Service", "meshmon-seed")
    assert seed["spec"]["clusterIP"] == "None" and seed["spec"]["publishNotReadyAddresses"]
    assert config.mesh.seeds == (f"meshmon-seed.{NAMESPACE}.svc.cluster.local:"
                                 f"{config.listen.udp_port}",)  # fmt: skip
    assert {p["port"] for p in seed["spec"]["ports"]} == {config.listen.udp_port}
    # the aggregator's Service, and the tags the mesh check targets, which the CA grants
    svc = find("Service", "meshmon-aggregator")
    https = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "https")
    assert config.sync.url == f"https://meshmon-aggregator.{NAMESPACE}.svc.cluster.local:{https}"
    tags = set(pod_env(ds, "certificate")["MESHMON_CERT_TAGS"].split())
    assert all(set(c.target_tags) <= tags for c in config.checks) and config.checks
    # where the certificate script writes is where the agent reads, and what it trusts
    cert_dir = Path(pod_env(ds, "certificate")["MESHMON_CERT_DIR"])
    assert (config.tls.cert, config.tls.key) == (cert_dir / "node.crt", cert_dir / "node.key")
    mounts = {m["name"]: m["mountPath"] for m in container(ds, "agent")["volumeMounts"]}
    assert config.tls.ca_cert.parent == config.tls.crl.parent == Path(mounts["trust"])
    assert Path(mounts["data"]) == config.node.data_dir and cert_dir.parent == config.node.data_dir
    # the probes and the image's health check ask the metrics listener
    agent = container(ds, "agent")
    metrics = next(p for p in agent["ports"] if p["name"] == "metrics")
    assert config.metrics.address == ("0.0.0.0", metrics["containerPort"])  # all of the node's
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_aggregator_config_passes_the_aggregator_check(tmp_path: Path) -> None:
    path = tmp_path / "aggregator.toml"
    path.write_text(find("ConfigMap", "meshmon-aggregator")["data"]["aggregator.toml"])
    cfg = load_aggregator_config(path, environ={"MESHMON_DATABASE_URL": "postgresql://x@db/m"})
    assert cfg.database_url == "postgresql://x@db/m"
    deploy = find("Deployment", "meshmon-aggregator")
    cert_dir = Path(pod_env(deploy, "certificate")["MESHMON_CERT_DIR"])
    assert cfg.tls.cert == cert_dir / "node.crt"
    svc = find("Service", "meshmon-aggregator")
    assert cfg.port == next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "https")
    # the probes ask the metrics listener, which the Service also exposes to Prometheus
    agg = container(deploy, "aggregator")
    metrics = next(p for p in agg["ports"] if p["name"] == "metrics")
    assert cfg.metrics.address == ("0.0.0.0", metrics["containerPort"])
    assert any(p["name"] == "metrics" and p["targetPort"] == "metrics"
               for p in svc["spec"]["ports"])  # fmt: skip
    assert agg["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert agg["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


# --- the certificate script of the init containers, run for real ---------------------------


def issue(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "issue_cert.py"
    script.write_text(find("ConfigMap", "meshmon-issue")["data"]["issue_cert.py"])
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env={"PATH": os.environ["PATH"], **env})  # fmt: skip


def operator_objects(tmp_path: Path) -> tuple[Path, Path]:
    """The CA folder as the Secret meshmon-ca mounts it, and the ConfigMap meshmon-trust."""
    pki.init_ca(tmp_path / "mesh-ca")
    secret, trust = tmp_path / "secret", tmp_path / "trust"
    secret.mkdir()
    trust.mkdir()
    for f in sorted((tmp_path / "mesh-ca").iterdir()):
        (secret / f.name).write_bytes(f.read_bytes())
        (secret / f.name).chmod(0o440)  # defaultMode 0440 with fsGroup
    for f in (pki.CA_CERT, pki.CRL_FILE):
        (trust / f).write_bytes((tmp_path / "mesh-ca" / f).read_bytes())
    return secret, trust


def test_agent_init_container_issues_a_certificate_the_agent_accepts(tmp_path: Path) -> None:
    ds = find("DaemonSet", "meshmon-agent")
    secret, trust = operator_objects(tmp_path)
    data = tmp_path / "node" / "var-lib-meshmon"
    env = {**pod_env(ds, "certificate"), "MESHMON_ISSUER_CA": str(secret),
           "MESHMON_TRUST_DIR": str(trust), "MESHMON_CERT_DIR": str(data / "certs")}
    first = issue(env, tmp_path)
    assert first.returncode == 0 and "issued a certificate for node-1.example" in first.stdout
    (tmp_path / "agent.toml").write_text(agent_toml())
    agent_env = {**pod_env(ds, "agent"), "MESHMON_DATA_DIR": str(data),
                 "MESHMON_CERT": str(data / "certs" / pki.NODE_CERT),
                 "MESHMON_KEY": str(data / "certs" / pki.NODE_KEY),
                 "MESHMON_CA_CERT": str(trust / pki.CA_CERT),
                 "MESHMON_CRL": str(trust / pki.CRL_FILE)}  # fmt: skip
    config = load_checked(tmp_path / "agent.toml", environ=agent_env)  # every file checked
    assert config.node.tags == ("k8s",)  # the certificate's, which placement uses
    serial = pki.load_certificate(data / "certs" / pki.NODE_CERT).serial_number
    # a restart keeps the node's identity ...
    again = issue(env, tmp_path)
    assert again.returncode == 0 and "keeping the certificate" in again.stdout
    assert pki.load_certificate(data / "certs" / pki.NODE_CERT).serial_number == serial
    # ... until the node's address changes
    moved = issue({**env, "MESHMON_LISTEN_ADDRESS": "10.0.0.9"}, tmp_path)
    assert moved.returncode == 0 and "does not list 10.0.0.9" in moved.stdout
    cert = pki.load_certificate(data / "certs" / pki.NODE_CERT)
    assert cert.serial_number != serial
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.9"]
    assert not (data / "certs.new").exists() and not (data / "certs.old").exists()


def test_init_container_without_the_ca_says_what_to_create(tmp_path: Path) -> None:
    ds = find("DaemonSet", "meshmon-agent")
    _, trust = operator_objects(tmp_path)
    env = {**pod_env(ds, "certificate"), "MESHMON_ISSUER_CA": str(tmp_path / "absent"),
           "MESHMON_TRUST_DIR": str(trust), "MESHMON_CERT_DIR": str(tmp_path / "certs")}
    proc = issue(env, tmp_path)
    assert proc.returncode == 1
    assert "create the Secret meshmon-ca" in proc.stderr and "Traceback" not in proc.stderr


def test_aggregator_init_container_issues_an_aggregator_certificate(tmp_path: Path) -> None:
    deploy = find("Deployment", "meshmon-aggregator")
    secret, trust = operator_objects(tmp_path)
    certs = tmp_path / "certs"
    env = {**pod_env(deploy, "certificate"), "MESHMON_ISSUER_CA": str(secret),
           "MESHMON_TRUST_DIR": str(trust), "MESHMON_CERT_DIR": str(certs)}
    proc = issue(env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    peer = pki.Trust.from_files(trust / pki.CA_CERT, trust / pki.CRL_FILE).verify(
        pki.load_certificate(certs / pki.NODE_CERT))
    assert (peer.name, peer.tags) == ("meshmon-aggregator", ("aggregator",))
    cert = pki.load_certificate(certs / pki.NODE_CERT)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"meshmon-aggregator.{NAMESPACE}.svc" in san.get_values_for_type(x509.DNSName)
