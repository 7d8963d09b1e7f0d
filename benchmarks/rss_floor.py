"""What an idle agent's resident set is made of: the agent against its dependencies' floor.

Run::

    .venv/bin/python -m benchmarks.rss_floor [--quick]

Two kinds of process, each measured from /proc (VmRSS) a few times, medians reported:

* **Agent**: ``meshmon agent run`` with no checks, in a mesh of two, a second after each sees
  the other alive (so it has done the mTLS handshakes an agent in a mesh does).
* **Floor** (the baseline): a process that imports only the libraries an agent cannot run
  without (trio, cryptography's x509 / AEAD / HKDF / EC, ssl, cbor2, h11, sortedcontainers,
  tomllib, json) and performs only the cryptography an agent must: parse its certificate, the
  CA and the CRL, load its key, check the CRL's and its certificate's signatures, sign and
  verify one ECDSA statement, one ECDH + HKDF + AES-GCM seal, build a server and a client
  SSL context, and complete a few mutual-TLS handshakes over loopback. Its stages are
  reported as well (``floor_stages``): no meshmon code runs in it.

``value - baseline_value`` is what meshmon's own code and state add to its dependencies. Most
of the floor is code pages of shared libraries (cryptography's Rust/OpenSSL module, the
system libcrypto loaded by ``hashlib`` / ``ssl``, libpython) that the kernel counts in every
process's RSS although all agents on a host share them (``floor_file_mib``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.realproc import Mesh, rss_bytes, wait_for

MIB = 2**20

FLOOR = r"""
import re, sys
def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
def file_rss():
    return int(re.search(r"RssFile:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
stages = {"bare": rss()}
import hashlib, json, ssl, tomllib
import cbor2, h11, sortedcontainers, trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
stages["imports"] = rss()
d = sys.argv[1] + "/"
ca = x509.load_pem_x509_certificate(open(d + "ca.crt", "rb").read())
cert = x509.load_pem_x509_certificate(open(d + "node.crt", "rb").read())
crl = x509.load_pem_x509_crl(open(d + "crl.pem", "rb").read())
key = serialization.load_pem_private_key(open(d + "node.key", "rb").read(), None)
crl.is_signature_valid(ca.public_key())
cert.verify_directly_issued_by(ca)
sig = key.sign(b"statement", ec.ECDSA(hashes.SHA256()))
cert.public_key().verify(sig, b"statement", ec.ECDSA(hashes.SHA256()))
shared = key.exchange(ec.ECDH(), cert.public_key())
aead = AESGCM(HKDF(hashes.SHA256(), 32, b"salt", b"info").derive(shared))
aead.decrypt(b"n" * 12, aead.encrypt(b"n" * 12, b"datagram", b"header"), b"header")
stages["crypto"] = rss()
def context(server):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False
    ctx.load_cert_chain(d + "node.crt", d + "node.key")
    ctx.load_verify_locations(d + "ca.crt")
    ctx.load_verify_locations(d + "crl.pem")
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx
server_ctx, client_ctx = context(True), context(False)
stages["ssl_contexts"] = rss()
async def handshakes():
    async def echo(stream):
        await stream.send_all(await stream.receive_some(16))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_ssl_over_tcp, echo, 0, server_ctx)
        port = listeners[0].transport_listener.socket.getsockname()[1]
        for _ in range(5):
            stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port,
                                                         ssl_context=client_ctx)
            await stream.send_all(b"hello")
            await stream.receive_some(16)
            await stream.aclose()
        nursery.cancel_scope.cancel()
trio.run(handshakes)
stages["tls"] = rss()
print(json.dumps({"stages": stages, "file": file_rss()}))
"""


def floor(certs: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", FLOOR, str(certs)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def agent_pair(mesh: Mesh) -> list[float]:
    """RSS of two idle agents once each sees the other alive (so both did mTLS handshakes)."""
    for name in ("a1", "a2"):
        shutil.rmtree(mesh.root / name / "data", ignore_errors=True)
    procs = [mesh.launch("a1", 2), mesh.launch("a2", 3)]
    try:
        for p in procs:
            mesh.wait_up(p)
        wait_for("the two agents to see each other alive", lambda: all(
            sum(m["state"] == "alive" for m in p.api("members")) == 2 for p in procs), 60)
        time.sleep(1.0)
        return [rss_bytes(p.pid) / MIB for p in procs]
    finally:
        for p in procs:
            p.stop()
        mesh.procs.clear()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 runs of each (default 7)")
    args = parser.parse_args()
    runs = 3 if args.quick else 7
    root = Path(tempfile.mkdtemp(prefix="meshmon-rss-floor-"))
    try:
        mesh = Mesh(root, port=28846)
        mesh.prepare("a1", 2)
        mesh.prepare("a2", 3, [f"127.0.0.2:{mesh.port}"])
        floors = [floor(root / "a1" / "certs") for _ in range(runs)]
        agents = [rss for _ in range(runs) for rss in agent_pair(mesh)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    stages = {k: round(statistics.median(f["stages"][k] for f in floors), 2)
              for k in floors[0]["stages"]}  # fmt: skip
    base = stages["tls"]
    agent = statistics.median(agents)
    print(f"floor stages (MiB): {stages}; agents: {sorted(round(a, 2) for a in agents)}",
          flush=True)  # fmt: skip
    print(json.dumps({
        "bench": "rss_floor",
        "metric": "resident set of an idle agent (no checks) in a mesh of two",
        "value": round(agent, 2),
        "unit": "MiB",
        "baseline": "its dependencies alone doing the cryptography and TLS an agent must "
                    "(no meshmon code)",
        "baseline_value": base,
        "ratio": round(agent / base, 3),
        "meshmon_adds_mib": round(agent - base, 2),
        "floor_stages": stages,
        "floor_file_mib": round(statistics.median(f["file"] for f in floors), 2),
        "runs": runs,
    }))


if __name__ == "__main__":
    main()
