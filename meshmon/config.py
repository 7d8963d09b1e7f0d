"""The agent's configuration: one TOML file, one frozen dataclass per section.

Every field has a default with its reason beside it, so an agent runs from a nearly empty file;
``meshmon config check FILE`` prints the effective result. Decoding and error reporting live in
:mod:`meshmon.configload`. Secrets paths may be overridden from the environment
(``MESHMON_CA_CERT``, ``MESHMON_CERT``, ``MESHMON_KEY``, ``MESHMON_CRL``) so that a container
can mount them where it likes without editing the file; so may the node's name and addresses
(``MESHMON_NODE_NAME``, ``MESHMON_LISTEN_ADDRESS``, ``MESHMON_ADVERTISE``), so that one file
serves every node of a Kubernetes DaemonSet (filled in from the downward API).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from meshmon.alerts.notify import AlertmanagerConfig, CommandConfig, WebhookConfig
from meshmon.alerts.rules import AlertRule, Silence
from meshmon.configload import (
    ByteSize,
    ConfigError,
    ConfigErrors,
    FieldError,
    FieldErrors,
    Seconds,
    decode,
    read_toml,
)
from meshmon.membership.config import PROFILES, MembershipConfig
from meshmon.metrics.config import MetricsConfig
from meshmon.probes.params import host_problem, split_target
from meshmon.wire import ingest, urls

DEFAULT_PORT = 7946
"""memberlist's port, so firewall rules written for Serf/Consul-style meshes carry over."""

ENV_OVERRIDES = {
    "MESHMON_CA_CERT": ("tls", "ca_cert"),
    "MESHMON_CERT": ("tls", "cert"),
    "MESHMON_KEY": ("tls", "key"),
    "MESHMON_CRL": ("tls", "crl"),
    "MESHMON_DATA_DIR": ("node", "data_dir"),
}
"""Environment variable → (table, key) of a path; the value is made absolute."""

ENV_VALUES = {
    "MESHMON_NODE_NAME": ("node", "name"),
    "MESHMON_LISTEN_ADDRESS": ("listen", "address"),
    "MESHMON_ADVERTISE": ("listen", "advertise"),
}
"""Environment variable → (table, key) taken as written (checked like the file's value)."""

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def check_name(text: str, what: str = "name") -> None:
    """Reject names that would not survive logs, file names and certificates."""
    if not text or len(text) > 63 or not set(text) <= _NAME_CHARS:
        raise ValueError(
            f"{text!r} is not a valid {what}: use 1-63 letters, digits, '-', '_' or '.'"
        )


def split_host_port(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port``, ``host`` or a bare IPv6 address.

    Raises:
        ValueError: the host is not a host name or an IP address, or the port is not 1..65535.
    """
    text = text.strip()
    host, port_text = split_target(text)
    problem = host_problem(host)
    if problem:
        example = "write host:port, e.g. \"10.0.0.1:7946\" or \"[fd00::1]:7946\""
        raise ValueError(f"{text!r} {problem}; {example}" if problem == "has no host"
                         else f"{problem}; {example}")  # fmt: skip
    if not port_text:
        if port_text == "":
            raise ValueError(f"{text!r} has an empty port; use 1-65535 or leave out the ':'")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r} has a bad port {port_text!r}; use 1-65535")
    return host, int(port_text)


def _raise_all(errors: list[FieldError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise FieldErrors(errors)


def _check_port(value: int, name: str) -> None:
    if not 0 <= value < 65536:
        raise FieldError(name, f"{value} is not a port; use 1-65535 (0 picks a free one)")


def _name_errors(key: str, names: tuple[str, ...], what: str,
                 single: bool = False) -> list[FieldError]:  # fmt: skip
    errors = []
    for i, name in enumerate(names):
        try:
            check_name(name, what)
        except ValueError as exc:
            errors.append(FieldError(key if single else f"{key}[{i}]", str(exc)))
    return errors


@dataclass(frozen=True)
class NodeConfig:
    """Who this agent is."""

    name: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    """Unique within the mesh; defaults to the short hostname. Must match the certificate."""
    tags: tuple[str, ...] = ()
    """Optional. The certificate's tags are what placement uses (the CA grants them); if given,
    they must equal the certificate's, so a config never silently disagrees with it."""
    data_dir: Path = Path("/var/lib/meshmon")
    """Where the ring store and runtime files live."""

    def __post_init__(self) -> None:
        errors = _name_errors("name", (self.name,), "node name", single=True)
        _raise_all(errors + _name_errors("tags", self.tags, "tag"))


@dataclass(frozen=True)
class ListenConfig:
    """Where the agent listens for its peers."""

    address: str = "0.0.0.0"
    """Bind address for both UDP gossip and TCP (mTLS) streams."""
    udp_port: int = DEFAULT_PORT
    """Gossip datagrams (SWIM probes, piggybacked updates)."""
    tcp_port: int = DEFAULT_PORT
    """mTLS streams (push-pull state sync, key exchange, TCP fallback pings)."""
    advertise: str = ""
    """Address peers should use; empty means ``address`` (required when that is a wildcard)."""

    def __post_init__(self) -> None:
        for name in ("address", "advertise"):
            value = getattr(self, name)
            if value:
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    raise FieldError(name, f"{value!r} is not an IP address") from None
        _check_port(self.udp_port, "udp_port")
        _check_port(self.tcp_port, "tcp_port")

    @property
    def advertise_address(self) -> str:
        """The address gossiped to peers."""
        return self.advertise or self.address


@dataclass(frozen=True)
class MeshConfig:
    """How the agent joins and keeps up with the mesh."""

    seeds: tuple[str, ...] = ()
    """``host:port`` of agents to join through (DNS names allowed). Empty: start a new mesh.
    A seed that cannot be resolved or reached is logged as a warning and retried with backoff
    while this agent knows no other member."""
    profile: Literal["lan", "wan", "local"] = "lan"
    """Timing profile: memberlist's LAN defaults, or its WAN/local variants."""
    probe_interval: Seconds | None = None
    """Override the profile's time between failure probes (LAN: 1s)."""
    probe_timeout: Seconds | None = None
    """Override the profile's direct-ack wait (LAN: 500ms); must be below probe_interval."""
    gossip_interval: Seconds | None = None
    """Override the profile's time between gossip rounds (LAN: 200ms)."""
    suspicion_mult: int | None = None
    """Override the suspicion timeout multiplier (LAN: 4; timeout = mult * log10(N) * probe)."""
    push_pull_interval: Seconds | None = None
    """Override the profile's full-state sync interval over TCP (LAN: 30s)."""
    lifeguard: bool = True
    """Lifeguard's local-health and dynamic-suspicion rules; leave on outside experiments."""

    def __post_init__(self) -> None:
        errors = []
        for i, seed in enumerate(self.seeds):
            try:
                split_host_port(seed)
            except ValueError as exc:
                errors.append(FieldError(f"seeds[{i}]", str(exc)))
        try:
            self.membership()
        except ValueError as exc:
            errors.append(FieldError(str(exc).split(" ")[0].removeprefix("membership."),
                                     str(exc)))  # fmt: skip
        _raise_all(errors)

    def membership(self) -> MembershipConfig:
        """The membership protocol config: the profile plus this section's overrides."""
        overrides: dict[str, Any] = {
            name: getattr(self, name)
            for name in ("probe_interval", "probe_timeout", "gossip_interval", "suspicion_mult",
                         "push_pull_interval")
            if getattr(self, name) is not None
        }
        return dataclasses.replace(PROFILES[self.profile](), lifeguard=self.lifeguard,
                                   **overrides)


@dataclass(frozen=True)
class TlsConfig:
    """The node's identity in the mesh PKI (see ``meshmon ca`` and ``meshmon cert``)."""

    ca_cert: Path = Path("certs/ca.crt")
    """The mesh CA certificate: the mesh *is* this CA."""
    cert: Path = Path("certs/node.crt")
    """This node's certificate, issued by ``meshmon cert issue``."""
    key: Path = Path("certs/node.key")
    """This node's private key (mode 0600)."""
    crl: Path = Path("certs/crl.pem")
    """The CA's revocation list; newer lists are also learnt from peers."""


@dataclass(frozen=True)
class LogConfig:
    """Logging through the standard ``logging`` module."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    """``json`` writes one object per line for log shippers."""


@dataclass(frozen=True)
class ControlConfig:
    """The local control API used by the CLI and the TUI."""

    socket: Path | None = None
    """Unix socket path; default ``<data_dir>/control.sock``."""


@dataclass(frozen=True)
class StoreConfig:
    """The local ring store of results."""

    max_bytes: ByteSize = ByteSize(256 * 2**20)
    """Ring capacity; the oldest segment is dropped when full (losses are counted). A ping
    result takes ~28 bytes on disk (compressed in batches, measured by benchmarks.agent_cost),
    so 256MiB holds ~9 million: about a day at 100 results/s."""
    segment_bytes: ByteSize = ByteSize(8 * 2**20)
    """Segment size: the unit that is dropped when the ring wraps."""
    fsync: Literal["always", "batch", "never"] = "batch"
    """``batch``: group appends and fsync at most every ``fsync_interval``."""
    fsync_interval: Seconds = Seconds(0.2)
    buffer_bytes: ByteSize = ByteSize(16 * 2**20)
    """Memory for results while the disk refuses writes (full, read-only, I/O errors); they
    are written, in order, once it accepts them again. 16MiB holds ~50,000 ping results
    (~300 bytes each, Python objects included), 10 minutes at 80 results/s. Beyond it new
    results are dropped and counted as lost."""

    def __post_init__(self) -> None:
        if self.buffer_bytes < 0:
            raise FieldError("buffer_bytes", "must be 0 (no buffer) or more")
        if self.segment_bytes < 4096:
            raise FieldError("segment_bytes", "must be at least 4KiB")
        if self.max_bytes < 2 * self.segment_bytes:
            raise FieldError("max_bytes", "must hold at least two segments (2 × segment_bytes)")


@dataclass(frozen=True)
class SyncConfig:
    """Lazy upload of results to an optional aggregator (:mod:`meshmon.sync`).

    With no URL configured and none learnt from gossip the agent stays fully serverless: no
    uploader runs and no store cursor holds records back.
    """

    urls: tuple[str, ...] = ()
    """Aggregators, ``https://HOST:PORT``, tried in order: the first that answers is used while
    it works, the next on an error. Each must hold a mesh certificate tagged ``aggregator``."""
    url: str = ""
    """One aggregator; the single form of ``urls`` (put first when both are given)."""
    batch_size: int = 5000
    """A batch leaves once this many results are waiting (~0.7 MB of CBOR at ~150 bytes a
    ping result; deflated on the wire). Also the most a catch-up batch carries."""
    max_delay: Seconds = Seconds(10.0)
    """...or once the oldest waiting result is this old: results reach the aggregator at most
    ~10 s late while an agent makes few of them, in one request per 10 s, not one per result."""
    backoff_min: Seconds = Seconds(1.0)
    """First retry delay while no aggregator answers; doubles per failure (full jitter)."""
    backoff_max: Seconds = Seconds(60.0)
    """Longest retry delay: 1,000 agents waiting for a lost aggregator cost it ~33 connection
    attempts a second, and it is found again within a minute of its return."""
    timeout: Seconds = Seconds(30.0)
    """Longest wait for one upload (connect, send a batch, read the acknowledgement)."""
    advertise: bool = True
    """Gossip the configured URLs in this agent's signed metadata, so that agents without
    them in their config find the aggregator too."""
    learn: bool = True
    """Use aggregator URLs advertised by other members (after the configured ones). The
    server must still prove it is an aggregator (its certificate's tag); turn this off to keep
    an agent without configured URLs serverless whatever its peers say."""

    def __post_init__(self) -> None:
        errors: list[FieldError] = []
        if self.url:
            errors += _url_errors("url", (self.url,), self.advertise, single=True)
        errors += _url_errors("urls", self.urls, self.advertise)
        if not 1 <= self.batch_size <= ingest.MAX_RECORDS:
            errors.append(FieldError("batch_size", f"must be 1-{ingest.MAX_RECORDS} (the most "
                                     "records an aggregator takes in one batch)"))  # fmt: skip
        if self.max_delay <= 0:
            errors.append(FieldError("max_delay", "must be greater than zero"))
        if self.backoff_min <= 0:
            errors.append(FieldError("backoff_min", "must be greater than zero"))
        elif self.backoff_max < self.backoff_min:
            errors.append(FieldError("backoff_max", f"must be at least backoff_min "
                                     f"({self.backoff_min:g}s)"))  # fmt: skip
        if self.timeout <= 0:
            errors.append(FieldError("timeout", "must be greater than zero"))
        if not errors and self.advertise and len(self.all_urls) > urls.MAX_GOSSIP_URLS:
            errors.append(FieldError("urls", f"{len(self.all_urls)} URLs, more than the "
                                     f"{urls.MAX_GOSSIP_URLS} an agent may advertise in gossip; "
                                     "list fewer or set advertise = false"))  # fmt: skip
        _raise_all(errors)

    @property
    def all_urls(self) -> tuple[str, ...]:
        """``url`` then ``urls``, normalised, without repeats."""
        found = (self.url,) if self.url else ()
        return tuple(dict.fromkeys(urls.normalize(u) for u in found + self.urls))


def _url_errors(key: str, values: tuple[str, ...], advertise: bool,
                single: bool = False) -> list[FieldError]:  # fmt: skip
    errors = []
    for i, value in enumerate(values):
        where = key if single else f"{key}[{i}]"
        problem = urls.url_problem(value)
        if problem is None and advertise and len(value) > urls.MAX_GOSSIP_URL:
            problem = (f"longer than the {urls.MAX_GOSSIP_URL} characters an agent may advertise "
                       "in gossip; shorten it or set advertise = false")  # fmt: skip
        if problem:
            errors.append(FieldError(where, problem))
    return errors


@dataclass(frozen=True)
class CheckConfig:
    """One check: what to probe, how often, and which agents do it."""

    name: str
    kind: str
    """A probe kind (``ping``, ``trace``, ``tcp``, ``udp``, ``http``, ``tls``) or an installed
    plugin's kind; its params and target syntax are declared beside the probe
    (:mod:`meshmon.probes.params`) and checked here."""
    interval: Seconds = Seconds(30.0)
    timeout: Seconds = Seconds(5.0)
    targets: tuple[str, ...] = ()
    """Static endpoints: hosts, ``host:port`` or URLs."""
    target_tags: tuple[str, ...] = ()
    """Agents carrying any of these tags are targets too (mesh probing)."""
    agent_tags: tuple[str, ...] = ()
    """Only agents with one of these tags run the check; empty means every agent."""
    replicas: int = 3
    """How many agents probe each target; 0 means all eligible agents (full mesh)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Probe-specific parameters (``count``, ``port``, ``expect_status``...)."""

    def __post_init__(self) -> None:
        errors = _name_errors("name", (self.name,), "check name", single=True)
        errors += _name_errors("target_tags", self.target_tags, "tag")
        errors += _name_errors("agent_tags", self.agent_tags, "tag")
        timing_ok = True
        if self.interval <= 0:
            errors.append(FieldError("interval", "must be greater than zero"))
            timing_ok = False
        elif self.timeout <= 0 or self.timeout > self.interval:
            errors.append(FieldError("timeout", "must be greater than zero and at most the "
                                     f"interval ({self.interval:g}s)"))  # fmt: skip
            timing_ok = False
        if self.replicas < 0:
            errors.append(FieldError("replicas", "must be 0 (all) or a positive number"))
        if not self.targets and not self.target_tags:
            errors.append(FieldError("targets", "a check needs targets or target_tags (or both)"))
        # the probe kind, its params and the syntax of each target, as the probe will see them
        from meshmon.probes.registry import default_registry  # only configs with checks pay

        issues = default_registry().check(self.kind, self.targets, self.params,
                                          self.timeout if timing_ok else float("inf"))
        errors += [FieldError(key, problem) for key, problem in issues]
        _raise_all(errors)


@dataclass(frozen=True)
class AlertsConfig:
    """Alert rules, agreement across vantage points, and silences (see :mod:`meshmon.alerts`)."""

    enabled: bool = True
    rules: tuple[AlertRule, ...] = ()
    quorum: int | None = None
    """m: how many of a target's k probers must call it failing; default a majority of k."""
    impaired_fraction: float = 0.5
    """A prober that sees this share of its targets fail at once reports itself impaired (one
    event) instead of alerting on each target."""
    impaired_min_targets: int = 3
    """...when that is at least this many targets."""
    silences: tuple[Silence, ...] = ()
    webhooks: tuple[WebhookConfig, ...] = ()
    alertmanagers: tuple[AlertmanagerConfig, ...] = ()
    commands: tuple[CommandConfig, ...] = ()
    max_backoff: Seconds = Seconds(300.0)
    """Longest wait between retries to a receiver that is down."""
    alertmanager_repeat: Seconds = Seconds(60.0)
    """Re-post firing alerts to Alertmanager this often (it expires alerts not re-sent, after
    its resolve_timeout, 5 minutes by default)."""

    @property
    def receivers(self) -> tuple[WebhookConfig | AlertmanagerConfig | CommandConfig, ...]:
        """Every receiver, in a stable order."""
        return (*self.webhooks, *self.alertmanagers, *self.commands)

    def __post_init__(self) -> None:
        errors: list[FieldError] = []
        if self.quorum is not None and self.quorum < 1:
            errors.append(FieldError("quorum", "must be 1 or more (or left out for a majority)"))
        if not 0 < self.impaired_fraction <= 1:
            errors.append(FieldError("impaired_fraction", "must be in (0, 1]"))
        if self.impaired_min_targets < 1:
            errors.append(FieldError("impaired_min_targets", "must be 1 or more"))
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if rule.name in seen:
                errors.append(FieldError(f"rules[{i}].name", f"{rule.name!r} is already used by "
                                         f"rules[{seen[rule.name]}]"))  # fmt: skip
            seen.setdefault(rule.name, i)
        _raise_all(errors)


@dataclass(frozen=True)
class AgentConfig:
    """The whole agent configuration."""

    node: NodeConfig = field(default_factory=NodeConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Prometheus metrics and health endpoints (:mod:`meshmon.metrics`); off by default."""
    checks: tuple[CheckConfig, ...] = ()

    def __post_init__(self) -> None:
        errors = []
        if self.listen.advertise_address in ("0.0.0.0", "::"):
            errors.append(FieldError(
                "listen.advertise",
                "listen.address is a wildcard, so set listen.advertise to the address "
                "peers should use",
            ))  # fmt: skip
        seen: dict[str, int] = {}
        for i, check in enumerate(self.checks):
            if check.name in seen:
                errors.append(FieldError(
                    f"checks[{i}].name",
                    f"{check.name!r} is already used by checks[{seen[check.name]}]",
                ))  # fmt: skip
            seen.setdefault(check.name, i)
        _raise_all(errors)

    @property
    def control_socket(self) -> Path:
        """Where the control API listens."""
        return self.control.socket or self.node.data_dir / "control.sock"


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> AgentConfig:
    """Read and validate an agent config file.

    Args:
        path: the TOML file.
        environ: environment for ``MESHMON_*`` overrides (default: ``os.environ``).

    Raises:
        ConfigError: the file is missing, is not TOML, or a value is wrong. The message names the
            file and the key path.
    """
    path = Path(path)
    source = str(path)
    data = read_toml(path, "create it or pass --config")
    env = os.environ if environ is None else environ
    for var, (section, key) in (*ENV_OVERRIDES.items(), *ENV_VALUES.items()):
        if env.get(var):
            table = data.setdefault(section, {})
            if not isinstance(table, dict):
                raise ConfigError(source, section, "expected a table")
            table[key] = str(Path(env[var]).absolute()) if var in ENV_OVERRIDES else env[var]
    try:
        return decode(AgentConfig, data, source, path.parent.absolute())
    except ConfigError as exc:
        raise _name_environment(exc, env) from None


def _name_environment(exc: ConfigError, env: Mapping[str, str]) -> ConfigError:
    """Say which variable set a wrong value, since the file does not show it."""
    by_key = {f"{section}.{key}": var
              for var, (section, key) in (*ENV_OVERRIDES.items(), *ENV_VALUES.items())
              if env.get(var)}  # fmt: skip
    if not by_key:
        return exc

    def named(error: ConfigError) -> ConfigError:
        var = by_key.get(error.key)
        return ConfigError(error.source, f"{error.key} (set by {var})", error.problem) \
            if var else error  # fmt: skip

    if isinstance(exc, ConfigErrors):
        return ConfigErrors([named(e) for e in exc.errors], exc.partial)
    return named(exc)


def config_from_dict(data: dict[str, Any], base_dir: Path, source: str = "<memory>") -> AgentConfig:
    """Build a config from already parsed data (tests, embedding)."""
    return decode(AgentConfig, data, source, base_dir)
