"""The aggregator's configuration: one TOML file whose tables all live under ``[aggregator]``.

Every field has a default with its reason beside it, so an aggregator runs from a file that
names only its TLS files (or from none, with ``--data`` and ``--db`` on the command line).
Decoding and error reporting are the agent's (:mod:`meshmon.configload`): every error names the
file and the key path (``aggregator.retention.raw_days``). A whole file looks like::

    [aggregator]
    address = "0.0.0.0"
    port = 7947
    data_dir = "/var/lib/meshmon-aggregator"
    database_url = ""                 # empty: a private PostgreSQL under data_dir

    [aggregator.retention]            # days; 0 keeps for ever
    raw_days = 30
    minute_days = 90
    hour_days = 730

    [aggregator.rollups]              # plain PostgreSQL (TimescaleDB runs its own policies)
    minute_interval = "30s"
    hour_interval = "5m"
    maintain_interval = "1h"

    [aggregator.tls]                  # the same layout as the agent's [tls]
    ca_cert = "certs/ca.crt"
    cert = "certs/node.crt"           # a mesh certificate carrying the tag "aggregator"
    key = "certs/node.key"
    crl = "certs/crl.pem"

    [aggregator.query]
    raw_max_range = "2h"
    minute_max_range = "3d"

    [aggregator.log]
    level = "info"
    format = "text"

    [aggregator.metrics]              # Prometheus /metrics, /healthz, /readyz
    listen = ""                       # e.g. "0.0.0.0:9108"; empty: no listener

Paths and the database URL may be overridden from the environment, as the agent's are
(``MESHMON_CA_CERT``, ``MESHMON_CERT``, ``MESHMON_KEY``, ``MESHMON_CRL``,
``MESHMON_AGGREGATOR_DATA``, ``MESHMON_DATABASE_URL``), so a container can mount secrets where
it likes and keep the database password out of the file.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshmon.config import LogConfig, TlsConfig
from meshmon.configload import ConfigError, FieldError, FieldErrors, Seconds, decode, read_toml
from meshmon.metrics.config import MetricsConfig

DEFAULT_PORT = 7947
"""One above the agents' 7946, so one firewall rule range covers a meshmon deployment."""

TAG = "aggregator"
"""The certificate tag an aggregator's certificate must carry: agents upload only to a server
whose mesh certificate has it, so a plain member cannot pose as the aggregator."""

ENV_OVERRIDES = {
    "MESHMON_CA_CERT": ("tls", "ca_cert"),
    "MESHMON_CERT": ("tls", "cert"),
    "MESHMON_KEY": ("tls", "key"),
    "MESHMON_CRL": ("tls", "crl"),
    "MESHMON_AGGREGATOR_DATA": ("", "data_dir"),
    "MESHMON_DATABASE_URL": ("", "database_url"),
}
"""Environment variable → (table under ``[aggregator]``, key); paths are made absolute."""


@dataclass(frozen=True)
class QueryConfig:
    """How the query API picks a resolution when the reader does not ask for one."""

    raw_max_range: Seconds = Seconds(2 * 3600.0)
    """Ranges up to this are answered from raw results: at one result per 10 s per series,
    2 h is 720 points a series, as many as a chart can show."""
    minute_max_range: Seconds = Seconds(3 * 86400.0)
    """Ranges up to this come from the 1-minute rollup (3 days: 4,320 points a series); longer
    ones from the 1-hour rollup."""
    max_rows: int = 50_000
    """Most rows one results query returns; the answer says when it was cut (``truncated``)."""

    def __post_init__(self) -> None:
        errors = []
        if self.raw_max_range <= 0:
            errors.append(FieldError("raw_max_range", "must be greater than zero"))
        if self.minute_max_range < self.raw_max_range:
            errors.append(FieldError("minute_max_range",
                                     "must be at least raw_max_range"))  # fmt: skip
        if not 0 < self.max_rows <= 1_000_000:
            errors.append(FieldError("max_rows", "must be between 1 and 1000000"))
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise FieldErrors(errors)


@dataclass(frozen=True)
class RetentionConfig:
    """How long each level of history is kept, in days; 0 keeps it for ever. Raw results go
    first, rollups later: a rollup is recomputed from raw rows, so each level must be kept at
    least as long as the one below it."""

    raw_days: int = 30
    """Raw results: a month of full detail (a 100-agent mesh at 10 results/s each writes
    ~2.6 M rows a day, ~0.6 GB). Dropped as whole day partitions (or TimescaleDB chunks)."""
    minute_days: int = 90
    """The 1-minute rollup: a quarter, for zooming into past incidents."""
    hour_days: int = 730
    """The 1-hour rollup: two years of trends."""

    def __post_init__(self) -> None:
        levels = [("raw_days", self.raw_days), ("minute_days", self.minute_days),
                  ("hour_days", self.hour_days)]  # fmt: skip
        errors = [FieldError(name, "must be 0 (keep for ever) or a number of days")
                  for name, value in levels if value < 0]  # fmt: skip
        for (short, a), (long, b) in itertools.pairwise(levels):
            if errors or b == 0 or (a and b >= a):
                continue
            kept = f"{a} days" if a else "for ever (0)"
            errors.append(FieldError(long, f"{b} days is shorter than {short} ({kept}); rollups "
                                     "are recomputed from the level below, so keep each at least "
                                     "as long"))  # fmt: skip
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise FieldErrors(errors)

    def days(self, name: str) -> float | None:
        """A level's retention in days, None for ever."""
        value: int = getattr(self, name)
        return float(value) if value else None


@dataclass(frozen=True)
class RollupsConfig:
    """When the aggregator's own jobs run on plain PostgreSQL."""

    minute_interval: Seconds = Seconds(30.0)
    """Between 1-minute rollup runs: the freshest minute rows lag by up to this."""
    hour_interval: Seconds = Seconds(300.0)
    """Between 1-hour rollup runs (each recomputes up to an hour of raw rows per series)."""
    maintain_interval: Seconds = Seconds(3600.0)
    """Between retention and partition-ahead runs."""

    def __post_init__(self) -> None:
        for name in ("minute_interval", "hour_interval", "maintain_interval"):
            if getattr(self, name) < 1:
                raise FieldError(name, "must be at least 1s")


@dataclass(frozen=True)
class ServerConfig:
    """The aggregator service: where it listens, where it keeps data, how long."""

    address: str = "0.0.0.0"
    """Bind address for HTTPS (agents upload here, readers query here)."""
    port: int = DEFAULT_PORT
    """HTTPS port; 0 picks a free one (tests)."""
    data_dir: Path = Path("/var/lib/meshmon-aggregator")
    """The embedded PostgreSQL's cluster (``data_dir/postgres``) and runtime files."""
    database_url: str = ""
    """A psycopg conninfo or ``postgresql://`` URL; empty starts a private PostgreSQL under
    ``data_dir`` and stops it on exit (the embedded default)."""
    db_connections: int = 4
    """PostgreSQL connections the query API and authentication may hold (the ingest writer
    has its own). Each query blocks one worker thread while it runs."""
    ingest_processes: int = 2
    """Processes that decode uploads and write them to PostgreSQL, each with its own
    connection (:mod:`aggregator.procwriter`); 0 writes from threads of the server's own
    process, whose one interpreter lock then caps ingest at what one core decodes."""
    tls: TlsConfig = field(default_factory=TlsConfig)
    """The aggregator's mesh identity; the certificate must carry the tag ``aggregator``."""
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    rollups: RollupsConfig = field(default_factory=RollupsConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Prometheus metrics and health endpoints (:mod:`aggregator.metrics`); off by default."""

    def __post_init__(self) -> None:
        errors = []
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            errors.append(FieldError("address", f"{self.address!r} is not an IP address"))
        if not 0 <= self.port < 65536:
            errors.append(FieldError("port", f"{self.port} is not a port; use 1-65535"))
        if not 1 <= self.db_connections <= 100:
            errors.append(FieldError("db_connections", "must be between 1 and 100"))
        if not 0 <= self.ingest_processes <= 64:
            errors.append(FieldError("ingest_processes", "must be between 0 and 64"))
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise FieldErrors(errors)


@dataclass(frozen=True)
class AggregatorFile:
    """The whole file: everything is under ``[aggregator]``."""

    aggregator: ServerConfig = field(default_factory=ServerConfig)


def load_config(path: str | os.PathLike[str] | None,
                environ: dict[str, str] | None = None) -> ServerConfig:  # fmt: skip
    """Read and validate an aggregator config file (``None``: the defaults, relative paths
    taken from the current folder).

    Raises:
        ConfigError: the file is missing, is not TOML, or a value is wrong; the message names
            the file and the key path (:class:`~meshmon.configload.ConfigErrors` for several).
    """
    if path is None:
        return config_from_dict({}, Path.cwd(), "<defaults>", environ)
    path = Path(path)
    source = str(path)
    data = read_toml(path, "create it or leave out --config")
    return config_from_dict(data, path.parent.absolute(), source, environ)


def config_from_dict(data: dict[str, Any], base_dir: Path, source: str = "<memory>",
                     environ: dict[str, str] | None = None) -> ServerConfig:  # fmt: skip
    """Build a config from parsed TOML (tests, embedding), applying environment overrides."""
    env = os.environ if environ is None else environ
    section = data.setdefault("aggregator", {})
    if not isinstance(section, dict):
        raise ConfigError(source, "aggregator", "expected a table")
    for var, (table, key) in ENV_OVERRIDES.items():
        value = env.get(var)
        if not value:
            continue
        target = section.setdefault(table, {}) if table else section
        if not isinstance(target, dict):
            raise ConfigError(source, f"aggregator.{table}", "expected a table")
        target[key] = value if key == "database_url" else str(Path(value).absolute())
    return decode(AggregatorFile, data, source, base_dir).aggregator
