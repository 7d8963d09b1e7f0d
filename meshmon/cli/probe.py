"""``meshmon probe ping|trace|tcp|udp|http|tls TARGET``: run one probe now and print the result.

Prints a human summary, or with ``--json`` one JSON object per result (one line each; two lines
with ``--family both``). The exit status is 0 when every result succeeded, 1 otherwise, 2 for
unusable options or when the ICMP engine cannot start.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from meshmon import results as r

probe_app = typer.Typer(help="Run one probe now and print the result (no agent needed).",
                        no_args_is_help=True)  # fmt: skip

Timeout = Annotated[float, typer.Option("--timeout", "-t", help="Seconds for the whole probe.")]
Family = Annotated[str, typer.Option("--family", "-f", help="4, 6, both, or auto (the literal's "
                                     "family or the resolver's first answer).")]  # fmt: skip
Json = Annotated[bool, typer.Option("--json", help="Print JSON (one object per result).")]
IcmpMode = Annotated[str, typer.Option("--icmp-mode", help="auto (unprivileged datagram socket "
                                       "if allowed, else raw), dgram or raw.")]  # fmt: skip


def _execute(kind: str, target: str, params: dict[str, Any], timeout: float, *,
             icmp: bool, icmp_mode: str = "auto") -> list[r.MonitoringResult]:  # fmt: skip
    if icmp_mode not in ("auto", "dgram", "raw"):
        raise typer.BadParameter("--icmp-mode must be auto, dgram or raw")
    import trio  # here, not at the top: keeps every other CLI command quick to start

    from meshmon.probes import IcmpConfig, IcmpEngine, IcmpPermissionError, ProbeContext, run_probe

    async def main() -> list[r.MonitoringResult]:
        ctx = ProbeContext()
        if not icmp:
            return await run_probe(kind, target, params, timeout, ctx)
        engine = IcmpEngine(IcmpConfig(mode=icmp_mode))  # type: ignore[arg-type]
        engine.open()  # fails here, plainly, when there is no ICMP privilege at all
        async with trio.open_nursery() as nursery:
            ctx.icmp = await nursery.start(engine.run)
            out = await run_probe(kind, target, params, timeout, ctx)
            nursery.cancel_scope.cancel()
        return out

    try:
        return trio.run(main)
    except IcmpPermissionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _emit(results: list[r.MonitoringResult], as_json: bool) -> None:
    for record in results:
        if as_json:
            typer.echo(json.dumps(r.to_dict(record)))
        else:
            typer.echo(human(record))
    raise typer.Exit(0 if results and all(x.is_successful() for x in results) else 1)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def human(record: r.MonitoringResult) -> str:
    """A short human-readable rendering of one result."""
    fam = f"IPv{record.family}" if record.family else "no address"
    res = record.result
    lines: list[str] = []
    if isinstance(res, r.PingResult):
        lines.append(f"PING {record.target} ({res.resolved_ip or '?'}, {fam}): {res.sent} sent, "
                     f"{res.successes} received, {res.loss * 100:.1f}% loss")  # fmt: skip
        if res.success_latencies:
            lines.append(f"rtt min/avg/median/max/stddev = {_ms(res.min_ms)}/"
                         f"{_ms(res.avg_response_time_ms)}/{_ms(res.median_ms)}/{_ms(res.max_ms)}/"
                         f"{_ms(res.stddev_ms)} ms, jitter {_ms(res.jitter_ms)} ms")  # fmt: skip
            lines.append("samples (ms): " + " ".join(_ms(s) if s is not None else "lost"
                                                      for s in res.samples))  # fmt: skip
    elif isinstance(res, r.TracerouteResult):
        state = "reached" if res.target_reached else "NOT reached"
        lines.append(f"TRACE {record.target} ({res.resolved_ip or '?'}, {fam}, {res.protocol}): "
                     f"target {state}")  # fmt: skip
        lines.append(f"{'HOP':>3}  {'ADDRESS':40} {'LOSS%':>6} {'SENT':>4} {'AVG':>9} "
                     f"{'BEST':>9} {'WORST':>9}")  # fmt: skip
        for hop in res.hops:
            lat = hop.latencies_ms
            lines.append(f"{hop.ttl:>3}  {', '.join(hop.addresses) or '???':40} "
                         f"{hop.loss * 100:>6.1f} {hop.sent:>4} {_ms(hop.avg_ms):>9} "
                         f"{_ms(min(lat) if lat else None):>9} "
                         f"{_ms(max(lat) if lat else None):>9}")  # fmt: skip
    elif isinstance(res, r.TcpConnectResult):
        where = f"{res.resolved_ip or record.target}:{res.port}"
        lines.append(f"TCP {record.target} ({where}, {fam}): " + (
            f"connected in {_ms(res.connect_time_ms)} ms" if res.connected else "FAILED"))
    elif isinstance(res, r.UdpConnectResult):
        lines.append(f"UDP {record.target} ({res.resolved_ip or '?'}:{res.port}, {fam}): "
                     f"{res.sent} sent, {res.received} replies, avg {_ms(res.response_time_ms_)} "
                     f"ms, jitter {_ms(res.jitter_ms)} ms")  # fmt: skip
    elif isinstance(res, r.HttpGetResult):
        lines.append(f"HTTP GET {res.url} ({fam}): status {res.status_code or '-'}, "
                     f"{res.response_size_bytes if res.response_size_bytes is not None else '-'} "
                     f"bytes, connect {_ms(res.connect_time_ms)} ms, first byte "
                     f"{_ms(res.first_byte_ms)} ms, total {_ms(res.response_time_ms_)} ms"
                     + (f", {res.redirects} redirect(s) to {res.final_url}" if res.redirects
                        else ""))  # fmt: skip
    elif isinstance(res, r.TlsCertResult):
        lines.append(f"TLS {record.target} ({res.resolved_ip or '?'}, {fam}): "
                     f"{'verified' if res.verified else 'NOT verified'}"
                     f"{', ' + res.tls_version if res.tls_version else ''}")  # fmt: skip
        if res.subject is not None:
            lines.append(f"subject: {res.subject}\nissuer:  {res.issuer}")
            lines.append(f"expires in {res.days_to_expiry:.1f} days; SAN: {', '.join(res.san)}")
    elif isinstance(res, r.PluginResult):
        lines.append(f"PLUGIN {res.plugin_name} {res.plugin_version} {record.target}: "
                     f"{'ok' if res.success else 'FAILED'} in {_ms(res.response_time_ms_)} ms "
                     f"{json.dumps(res.data)}")  # fmt: skip
    error = record.error_message()
    if error and not record.is_successful():
        lines.append(f"error: {error}")
    elif error:
        lines.append(f"note: {error}")
    return "\n".join(lines)


def _params(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


@probe_app.command("ping")
def ping_cmd(
    target: Annotated[str, typer.Argument(help="Host name or address.")],
    count: Annotated[int, typer.Option("--count", "-c", help="Echo requests.")] = 5,
    interval: Annotated[float, typer.Option("--interval", "-i", help="Seconds between them.")]
    = 0.2,
    timeout: Timeout = 5.0, family: Family = "auto", icmp_mode: IcmpMode = "auto",
    as_json: Json = False,
) -> None:  # fmt: skip
    """ICMP echo burst: loss, min/avg/median/max/stddev and per-packet RTTs."""
    results = _execute("ping", target, _params(count=count, interval=interval, family=family),
                       timeout, icmp=True, icmp_mode=icmp_mode)  # fmt: skip
    _emit(results, as_json)


@probe_app.command("trace")
def trace_cmd(
    target: Annotated[str, typer.Argument(help="Host name or address.")],
    protocol: Annotated[str, typer.Option(help="icmp, udp or tcp.")] = "icmp",
    max_hops: Annotated[int, typer.Option("--max-hops", help="Highest TTL.")] = 30,
    rounds: Annotated[int, typer.Option(help="Probes per hop (mtr-style rounds).")] = 3,
    port: Annotated[int | None, typer.Option(help="UDP base port or TCP port.")] = None,
    interval: Annotated[float | None, typer.Option(
        help="Seconds between rounds (default 1, as mtr: within routers' ICMP rate limits).",
    )] = None,
    probe_spacing: Annotated[float | None, typer.Option(
        "--probe-spacing", help="Seconds between probes of a round (default interval / hops).",
    )] = None,
    timeout: Timeout = 10.0, family: Family = "auto", icmp_mode: IcmpMode = "auto",
    as_json: Json = False,
) -> None:  # fmt: skip
    """mtr-style traceroute: per-hop addresses, loss and latency."""
    params = _params(protocol=protocol, max_hops=max_hops, rounds=rounds, port=port,
                     interval=interval, probe_spacing=probe_spacing, family=family)  # fmt: skip
    _emit(_execute("trace", target, params, timeout, icmp=protocol == "icmp",
                   icmp_mode=icmp_mode), as_json)  # fmt: skip


@probe_app.command("tcp")
def tcp_cmd(
    target: Annotated[str, typer.Argument(help="host:port, [v6]:port, or host with --port.")],
    port: Annotated[int | None, typer.Option(help="Port (if not in TARGET).")] = None,
    timeout: Timeout = 5.0, family: Family = "auto", as_json: Json = False,
) -> None:  # fmt: skip
    """TCP connect: time to established."""
    _emit(_execute("tcp", target, _params(port=port, family=family), timeout, icmp=False),
          as_json)  # fmt: skip


@probe_app.command("udp")
def udp_cmd(
    target: Annotated[str, typer.Argument(help="host:port, [v6]:port, or host with --port.")],
    port: Annotated[int | None, typer.Option(help="Port (if not in TARGET).")] = None,
    mode: Annotated[str, typer.Option(help="payload (any UDP service) or echo (a meshmon "
                                      "agent's responder, plain).")] = "payload",
    payload: Annotated[str | None, typer.Option(help="Text to send.")] = None,
    payload_hex: Annotated[str | None, typer.Option("--payload-hex", help="Bytes to send, hex.")]
    = None,
    expect: Annotated[str | None, typer.Option(help="Regex the reply must match.")] = None,
    count: Annotated[int | None, typer.Option("--count", "-c", help="Datagrams.")] = None,
    timeout: Timeout = 5.0, family: Family = "auto", as_json: Json = False,
) -> None:  # fmt: skip
    """UDP request/reply: RTT, loss and jitter."""
    params = _params(port=port, mode=mode, payload=payload, payload_hex=payload_hex,
                     expect=expect, count=count, family=family)  # fmt: skip
    _emit(_execute("udp", target, params, timeout, icmp=False), as_json)


@probe_app.command("http")
def http_cmd(
    url: Annotated[str, typer.Argument(help="http:// or https:// URL.")],
    expect_status: Annotated[list[int] | None, typer.Option("--expect-status",
                             help="Accepted status (repeatable; default 200-399).")] = None,
    body_regex: Annotated[str | None, typer.Option("--body-regex", help="Regex the body must "
                                                   "contain.")] = None,
    follow_redirects: Annotated[bool, typer.Option("--follow-redirects",
                                                   help="Follow redirects.")] = False,
    max_redirects: Annotated[int, typer.Option("--max-redirects")] = 5,
    insecure: Annotated[bool, typer.Option("--insecure", help="Do not verify TLS.")] = False,
    ca_file: Annotated[str | None, typer.Option("--ca-file", help="Extra CA bundle.")] = None,
    timeout: Timeout = 10.0, family: Family = "auto", as_json: Json = False,
) -> None:  # fmt: skip
    """HTTP GET: status, size, timings, validators."""
    params = _params(expect_status=expect_status or None, body_regex=body_regex,
                     follow_redirects=follow_redirects, max_redirects=max_redirects,
                     verify_tls=not insecure, ca_file=ca_file, family=family)  # fmt: skip
    _emit(_execute("http", url, params, timeout, icmp=False), as_json)


@probe_app.command("tls")
def tls_cmd(
    target: Annotated[str, typer.Argument(help="host, host:port or [v6]:port (port 443).")],
    port: Annotated[int | None, typer.Option(help="Port (if not in TARGET).")] = None,
    server_name: Annotated[str | None, typer.Option("--server-name", help="SNI / name to "
                                                    "verify.")] = None,
    min_days: Annotated[float, typer.Option("--min-days", help="Warn below this many days.")]
    = 14.0,
    ca_file: Annotated[str | None, typer.Option("--ca-file", help="Extra CA bundle.")] = None,
    timeout: Timeout = 5.0, family: Family = "auto", as_json: Json = False,
) -> None:  # fmt: skip
    """TLS certificate: days to expiry, issuer, subject; why verification failed."""
    params = _params(port=port, server_name=server_name, min_days=min_days, ca_file=ca_file,
                     family=family)  # fmt: skip
    _emit(_execute("tls", target, params, timeout, icmp=False), as_json)


