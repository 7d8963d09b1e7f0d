"""``banner``: connect over TCP, read the first line the service sends, optionally match it.

SSH, SMTP, FTP, POP3, IMAP, Redis (after a PING) and many others greet first; a greeting that
arrives and looks right says more than an open port does.

Params: ``port`` (or ``host:port`` in the target), ``expect`` (a regex the banner must match),
``send`` (text to send first, e.g. ``"PING\\r\\n"`` for Redis), ``max_bytes`` (default 512).
"""

from __future__ import annotations

import re
import time
from typing import ClassVar

import trio

from meshmon.probes.params import PORT, Param, host_port_target, regex_rule
from meshmon.probes.plugin import PluginRequest, PluginResult


class BannerProbe:
    """A meshmon probe plugin: one instance serves every check of kind ``banner``."""

    name = "banner"
    version = "0.1.0"

    # Declared params and target syntax: `meshmon config check` (and agent start) refuse a
    # check with an unknown param, a wrong type or range, or a target without a port.
    params: ClassVar[dict[str, Param]] = {
        "port": PORT,
        "expect": Param((str,), "regex the banner must match", rule=regex_rule),
        "send": Param((str,), "text to send first, e.g. \"PING\\r\\n\""),
        "max_bytes": Param((int,), "bytes read at most (512)", low=1, high=65536),
    }
    check_target = staticmethod(host_port_target(lambda params: None))

    async def probe(self, request: PluginRequest) -> PluginResult:
        """Read the banner at ``request.target``; never raises for network trouble."""
        host, _, port_text = request.target.rpartition(":")
        if not host:
            host, port_text = request.target, str(request.params.get("port", ""))
        if not port_text.isdigit():
            return request.result(False, error="banner needs a port: host:port or params.port")
        expect = request.params.get("expect")
        send = str(request.params.get("send", "")).encode()
        max_bytes = int(request.params.get("max_bytes", 512))
        t0 = time.monotonic()
        try:
            # leave a little of the engine's timeout for us to report, instead of being cut off
            with trio.fail_after(request.timeout * 0.9):
                stream = await trio.open_tcp_stream(host.strip("[]"), int(port_text))
                async with stream:
                    if send:
                        await stream.send_all(send)
                    data = b""
                    while b"\n" not in data and len(data) < max_bytes:
                        chunk = await stream.receive_some(max_bytes - len(data))
                        if not chunk:
                            break
                        data += chunk
        except trio.TooSlowError:
            return request.result(False, error=f"no banner within {request.timeout * 0.9:g}s")
        except OSError as exc:
            return request.result(False, error=f"connect failed: {exc.strerror or exc}")
        elapsed = (time.monotonic() - t0) * 1000
        banner = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
        if not banner:
            return request.result(False, response_time_ms=elapsed,
                                  error="the service closed without a banner")
        if expect and not re.search(str(expect), banner):
            return request.result(False, response_time_ms=elapsed, data={"banner": banner},
                                  error=f"banner {banner!r} does not match {expect!r}")
        return request.result(True, response_time_ms=elapsed, data={"banner": banner})
