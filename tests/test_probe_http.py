"""The http probe against a real HTTP server (Python's http.server, in a thread on loopback):
methods, request bodies and headers, content-encoded bodies, bounded decoding, TLS contexts."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import ssl
import threading
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from meshmon import results as r
from meshmon.probes import ProbeContext, http_client, run_probe
from tests.conftest import Mesh

CTX = ProbeContext(agent="node-a", check="web")
PAGE = b"<html>status: all systems nominal</html>" * 50


class Handler(http.server.BaseHTTPRequestHandler):
    """Answers with what it saw (method, headers, body) and serves encoded pages."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        sent = self.rfile.read(length) if length else b""
        encoding = ""
        if self.path == "/gzip":
            body, encoding = gzip.compress(PAGE), "gzip"
        elif self.path == "/deflate":
            body, encoding = zlib.compress(PAGE), "deflate"
        elif self.path == "/bomb":  # 64 MiB of zeros in ~64 kB
            body, encoding = gzip.compress(b"\0" * (64 << 20), 9), "gzip"
        elif self.path == "/corrupt":
            body, encoding = b"\x1f\x8b not really gzip", "gzip"
        elif self.path == "/compress":
            body, encoding = b"whatever", "compress"
        elif self.path == "/see-other":
            self.send_response(303)
            self.send_header("Location", "/echo")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        else:
            body = json.dumps({"method": self.command, "body": sent.decode(),
                               "headers": {k.lower(): v for k, v in self.headers.items()}
                               }).encode()  # fmt: skip
        self.send_response(201 if self.command == "POST" else 200)
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def probe(url: str, params: dict[str, Any] | None = None) -> r.HttpGetResult:
    with trio.fail_after(5):
        (rec,) = await run_probe("http", url, params or {}, 3.0, CTX)
    assert r.decode_result(r.encode_result(rec)) == rec
    assert isinstance(rec.result, r.HttpGetResult)
    return rec.result


async def test_gzip_and_deflate_bodies_match_after_decoding(base: str) -> None:
    for path in ("/gzip", "/deflate"):
        res = await probe(base + path, {"body_regex": "all systems nominal"})
        assert res.success, (path, res.error)
        assert res.response_size_bytes is not None and res.response_size_bytes < len(PAGE)
    missing = await probe(base + "/gzip", {"body_regex": "on fire"})
    assert not missing.success and "body does not match" in (missing.error or "")


async def test_bodies_that_cannot_be_decoded_fail_the_match_saying_why(base: str) -> None:
    corrupt = await probe(base + "/corrupt", {"body_regex": "x"})
    assert not corrupt.success and "corrupt gzip body" in (corrupt.error or "")
    unknown = await probe(base + "/compress", {"body_regex": "x"})
    assert "cannot decode content-encoding 'compress'" in (unknown.error or "")
    # without a regex the body is not decoded at all: status decides
    assert (await probe(base + "/compress")).success


async def test_a_compression_bomb_is_decoded_only_up_to_max_body_bytes(base: str) -> None:
    res = await probe(base + "/bomb", {"body_regex": "^\\x00{1000}$", "max_body_bytes": 1000})
    assert res.success, res.error
    assert res.response_size_bytes is not None and res.response_size_bytes < 1 << 20


async def test_methods_request_body_and_headers_reach_the_server(base: str) -> None:
    post = await probe(base + "/echo", {
        "method": "post", "body": '{"ping": 1}', "expect_status": 201,
        "headers": {"Content-Type": "application/json", "X-Probe": "meshmon", "Accept": "a/b"},
        "body_regex": r'"method": "POST", "body": "\{\\"ping\\": 1\}"',
    })  # fmt: skip
    assert post.success and post.status_code == 201 and post.method == "POST", post.error
    seen = await probe(base + "/echo", {"body_regex": '"x-probe": "meshmon"',
                                        "headers": {"X-Probe": "meshmon"}})
    assert seen.success, seen.error
    for method in ("PUT", "DELETE", "OPTIONS", "PATCH"):
        res = await probe(base + "/echo", {"method": method, "body_regex": f'"{method}"'})
        assert res.success and res.method == method, (method, res.error)


async def test_head_reads_no_body_and_gets_the_headers_timing(base: str) -> None:
    res = await probe(base + "/gzip", {"method": "HEAD"})
    assert res.success and res.status_code == 200 and res.method == "HEAD"
    assert res.response_size_bytes == 0 and res.first_byte_ms is not None
    with trio.fail_after(5):
        (bad,) = await run_probe("http", base + "/", {"method": "HEAD", "body_regex": "x"}, 1, CTX)
    assert "HEAD response has no body" in (bad.error_message() or "")
    with trio.fail_after(5):
        (bad,) = await run_probe("http", base + "/", {"method": "BREW"}, 1, CTX)
    assert "params.method: 'BREW' is not a method" in (bad.error_message() or "")


async def test_see_other_after_post_follows_with_get(base: str) -> None:
    res = await probe(base + "/see-other", {"method": "POST", "body": "x",
                                            "follow_redirects": True, "body_regex": '"GET"'})
    assert res.success and res.redirects == 1 and res.final_url == base + "/echo", res.error


def test_tls_contexts_are_built_once_per_setting(mesh: Mesh) -> None:
    a = http_client.tls_context(True, None)
    assert http_client.tls_context(True, None) is a and a.verify_mode == ssl.CERT_REQUIRED
    insecure = http_client.tls_context(False, None)
    assert insecure is not a and insecure.verify_mode == ssl.CERT_NONE
    assert http_client.tls_context(False, "/nonexistent") is insecure  # CA file unused
    ca = str(mesh.ca_cert)
    private = http_client.tls_context(True, ca)
    assert private is not a and http_client.tls_context(True, ca) is private
    os.utime(ca, ns=(0, 1))  # the operator replaced the CA file: a new context
    assert http_client.tls_context(True, ca) is not private


async def test_plain_http_builds_no_tls_context(base: str) -> None:
    http_client._TLS_CONTEXTS.clear()
    assert (await probe(base + "/echo")).success
    assert not http_client._TLS_CONTEXTS
