"""Benchmark: meshmon's ``http`` probe against curl on the same loopback server.

Run as::

    .venv/bin/python -m benchmarks.http [--quick]

A small HTTP/1.1 server (Python's ``ThreadingHTTPServer``, in its own process so it never
competes with the prober for the GIL) serves a 1 kB body on 127.0.0.1, over plain HTTP and over
HTTPS with a certificate from a throw-away meshmon CA. Runs alternate: one ``curl`` (its own
``time_total``, a fresh process and connection each time), then one meshmon probe through the
public :func:`meshmon.probes.run_probe` in one long-lived trio process (its ``response_time_ms``,
a fresh connection each time, as an agent does). Medians over all runs are reported, with the
prober's CPU per probe.

curl runs twice per round: as it comes (keep-alive) and with ``Connection: close`` as meshmon
sends (over TLS this server's keep-alive path holds the body behind Nagle until curl's delayed
ACK, +40 ms); the baseline is the faster of the two medians. ``value`` is meshmon's median
plain-HTTP response time and ``baseline_value`` curl's; the acceptance bar is
``value - baseline_value <= 1 ms``. The HTTPS figures are extra fields.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from meshmon import pki
from meshmon.probes import ProbeContext, run_probe

SERVER = r"""
import http.server, ssl, sys
BODY = b"x" * 1024
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
if len(sys.argv) > 1:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""


def start_server(*tls: str) -> tuple[subprocess.Popen[str], int]:
    """The server process and its port."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER, *tls], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def curl_ms(url: str, ca: str | None, close: bool) -> float | None:
    """curl's own total time for one request, in ms (``None`` if it failed)."""
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}", url]
    if close:  # as meshmon sends it
        cmd[1:1] = ["-H", "Connection: close"]
    if ca:
        cmd[1:1] = ["--cacert", ca]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    return float(out.stdout) * 1000 if out.returncode == 0 else None


async def measure(url: str, ca: str | None, runs: int) -> dict[str, float]:
    """Alternate curl (keep-alive, then close) and meshmon ``runs`` times; medians, CPU."""
    ctx = ProbeContext(agent="bench", check="http")
    params = {"ca_file": ca} if ca else {}
    ours: list[float] = []
    keep: list[float] = []
    close: list[float] = []
    cpu = 0.0
    for i in range(runs + 3):  # the first few warm up (imports, caches, the server's threads)
        k, c = curl_ms(url, ca, False), curl_ms(url, ca, True)
        t0 = time.process_time()
        (res,) = await run_probe("http", url, params, 5.0, ctx)
        spent = time.process_time() - t0
        m = res.response_time_ms()
        size = getattr(res.result, "response_size_bytes", None)
        if not res.is_successful() or m is None or k is None or c is None or size != 1024:
            raise SystemExit(f"probe failed: meshmon {res.error_message()!r} ({size} bytes), "
                             f"curl {k!r}/{c!r}")  # fmt: skip
        if i >= 3:
            ours.append(m)
            keep.append(k)
            close.append(c)
            cpu += spent
    return {
        "meshmon_ms": statistics.median(ours),
        "curl_keepalive_ms": statistics.median(keep),
        "curl_close_ms": statistics.median(close),
        "curl_ms": min(statistics.median(keep), statistics.median(close)),
        "meshmon_p90_ms": statistics.quantiles(ours, n=10)[-1],
        "meshmon_cpu_ms_per_probe": cpu / runs * 1000,
    }


def main() -> None:
    """Run both tools on both servers; print the JSON summary last."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (< 60 s)")
    parser.add_argument("--runs", type=int, default=0, help="runs per tool and scheme")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed as the baseline: apt-get install curl")
    runs = args.runs or (60 if args.quick else 300)
    with tempfile.TemporaryDirectory() as tmp:
        pki.init_ca(Path(tmp) / "ca", name="bench CA")
        pki.issue_cert(Path(tmp) / "ca", "web", Path(tmp) / "web", ips=("127.0.0.1",))
        ca = str(Path(tmp) / "ca" / pki.CA_CERT)
        cert, key = (str(Path(tmp) / "web" / n) for n in (pki.NODE_CERT, pki.NODE_KEY))
        plain, plain_port = start_server()
        tls, tls_port = start_server(cert, key)
        try:
            http = trio.run(measure, f"http://127.0.0.1:{plain_port}/", None, runs)
            https = trio.run(measure, f"https://127.0.0.1:{tls_port}/", ca, runs)
        finally:
            for proc in (plain, tls):
                proc.terminate()
                proc.wait()
    for name, row in (("http", http), ("https", https)):
        print(f"{name:6} meshmon {row['meshmon_ms']:.3f} ms (p90 {row['meshmon_p90_ms']:.3f}, "
              f"CPU {row['meshmon_cpu_ms_per_probe']:.2f} ms/probe)  curl keep-alive "
              f"{row['curl_keepalive_ms']:.3f} ms, curl Connection: close "
              f"{row['curl_close_ms']:.3f} ms", file=sys.stderr)  # fmt: skip
    summary = {
        "bench": "http",
        "metric": "loopback HTTP GET response time, median",
        "value": round(http["meshmon_ms"], 3),
        "unit": "ms",
        "baseline": "curl -w %{time_total}, same server, alternating runs; the faster of its "
                    "keep-alive and Connection: close medians",
        "baseline_value": round(http["curl_ms"], 3),
        "ratio": round(http["meshmon_ms"] / http["curl_ms"], 3),
        "difference_ms": round(http["meshmon_ms"] - http["curl_ms"], 3),
        "runs": runs,
        "cpu_ms_per_probe": round(http["meshmon_cpu_ms_per_probe"], 3),
        "curl_keepalive_ms": round(http["curl_keepalive_ms"], 3),
        "curl_close_ms": round(http["curl_close_ms"], 3),
        "https_ms": round(https["meshmon_ms"], 3),
        "https_curl_ms": round(https["curl_ms"], 3),
        "https_curl_keepalive_ms": round(https["curl_keepalive_ms"], 3),
        "https_difference_ms": round(https["meshmon_ms"] - https["curl_ms"], 3),
        "https_cpu_ms_per_probe": round(https["meshmon_cpu_ms_per_probe"], 3),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
