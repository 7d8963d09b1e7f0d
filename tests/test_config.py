"""Config loading: every error class names the file and the key path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from meshmon.config import load_config, split_host_port
from meshmon.configload import ConfigError, parse_duration, parse_size
from meshmon.probes import PluginRequest, default_registry
from meshmon.probes.params import Param
from meshmon.results import PluginResult


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


MINIMAL = '[node]\nname = "n1"\n[listen]\naddress = "127.0.0.2"\n'


def test_minimal_file_gets_documented_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.node.name == "n1"
    assert cfg.listen.udp_port == 7946
    assert cfg.mesh.profile == "lan"
    assert cfg.store.fsync_interval == 0.2
    assert cfg.tls.ca_cert == tmp_path / "certs/ca.crt"  # relative to the file
    assert cfg.control_socket == Path("/var/lib/meshmon/control.sock")


def test_durations_sizes_and_checks_decode(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + """
[store]
max_bytes = "64MiB"
segment_bytes = "1MiB"
[[checks]]
name = "web"
kind = "http"
interval = "1m"
timeout = "500ms"
targets = ["https://example.com/"]
params = { expect_status = 200 }
"""))
    assert cfg.store.max_bytes == 64 * 2**20
    check = cfg.checks[0]
    assert (check.interval, check.timeout) == (60.0, 0.5)
    assert check.params == {"expect_status": 200}


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        ('[node]\nname = "n1"\nnmae = "x"\n', "node.nmae", "unknown key"),
        ('[nodes]\nname = "n1"\n', "nodes", "unknown key"),
        ('[node]\nname = 5\n', "node.name", "expected a string"),
        ('[node]\nname = "bad name!"\n', "node.name", "not a valid node name"),
        ('[node]\ntags = ["ok", "no spaces"]\n', "node.tags[1]", "not a valid tag"),
        ('[listen]\nudp_port = 70000\n', "listen.udp_port", "not a port"),
        ('[listen]\naddress = "not-an-ip"\n', "listen.address", "not an IP address"),
        ('[listen]\naddress = "0.0.0.0"\n', "listen.advertise", "wildcard"),
        ('[mesh]\nseeds = ["10.0.0.1:99999"]\n', "mesh.seeds[0]", "bad port"),
        ('[mesh]\nprofile = "fast"\n', "mesh.profile", "choose one of"),
        ('[log]\nformat = "xml"\n', "log.format", "choose one of 'text', 'json'"),
        ('[store]\nfsync_interval = "soon"\n', "store.fsync_interval", "not a duration"),
        ('[store]\nmax_bytes = "lots"\n', "store.max_bytes", "not a size"),
        ('[store]\nmax_bytes = "8KiB"\nsegment_bytes = "8KiB"\n', "store.max_bytes",
         "two segments"),
        ('[[checks]]\nkind = "ping"\ntargets = ["a"]\n', "checks[0].name", "required"),
        ('[[checks]]\nname = "a"\nkind = "ping"\ntargets = ["a"]\n'
         '[[checks]]\nname = "b"\nkind = "ping"\ninterval = "1s"\ntimeout = "2s"\n'
         'targets = ["a"]\n', "checks[1].timeout", "at most the interval"),
        ('[[checks]]\nname = "a"\nkind = "ping"\n', "checks[0].targets", "needs targets"),
        ('[[checks]]\nname = "a"\nkind = "ping"\ntargets = ["x"]\n'
         '[[checks]]\nname = "a"\nkind = "ping"\ntargets = ["y"]\n', "checks[1].name",
         "already used"),
        ('[tls]\nkey = ""\n', "tls.key", "expected a file path"),
        ("checks = 3\n", "checks", "expected a list"),
    ],
)
def test_errors_name_file_key_and_problem(tmp_path: Path, body: str, key: str, words: str) -> None:
    if "listen" not in body:
        body += '\n[listen]\naddress = "127.0.0.2"\n' if "[listen]" not in body else ""
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert info.value.key == key, message
    assert words in message


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[node\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_environment_overrides_secret_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), environ={"MESHMON_KEY": "/run/secrets/k.pem"})
    assert cfg.tls.key == Path("/run/secrets/k.pem")


def test_environment_sets_node_name_and_addresses(tmp_path: Path) -> None:
    # one ConfigMap file for every node of a DaemonSet: name and address from the downward API
    text = "[listen]\naddress = \"0.0.0.0\"\n"
    cfg = load_config(write(tmp_path, text), environ={
        "MESHMON_NODE_NAME": "node-a.example", "MESHMON_ADVERTISE": "10.1.2.3"})
    assert (cfg.node.name, cfg.listen.address, cfg.listen.advertise_address) == (
        "node-a.example", "0.0.0.0", "10.1.2.3")
    cfg = load_config(write(tmp_path, MINIMAL), environ={"MESHMON_LISTEN_ADDRESS": "10.1.2.4"})
    assert cfg.listen.address == "10.1.2.4"  # the environment wins over the file


def test_environment_values_are_checked_like_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"listen\.address \(set by MESHMON_LISTEN_ADDRESS\): "
                                          r"'node-a' is not an IP address"):
        load_config(write(tmp_path, MINIMAL), environ={"MESHMON_LISTEN_ADDRESS": "node-a"})
    with pytest.raises(ConfigError, match=r"node\.name \(set by MESHMON_NODE_NAME\): .*not a "
                                          r"valid node name"):
        load_config(write(tmp_path, MINIMAL), environ={"MESHMON_NODE_NAME": "a b"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10.0), ("1.5m", 90.0), ("2h", 7200.0), ("250us", 0.00025), (3, 3.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "ten s", "-1s", "1 fortnight"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_parse_size() -> None:
    assert parse_size("64MiB") == 64 * 2**20
    assert parse_size("1GB") == 10**9
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError, match="not a size"):
        parse_size("big")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.0.0.1:7000", ("10.0.0.1", 7000)), ("seed.example.com", ("seed.example.com", 7946)),
     ("[::1]:9000", ("::1", 9000)), ("fe80::1", ("fe80::1", 7946))],
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


# --- checks: kinds, params and targets, as the probes will see them ---------------------------

CHECK = '[[checks]]\nname = "c"\ninterval = "10s"\ntimeout = "5s"\n'


@pytest.mark.parametrize(
    ("check", "key", "words"),
    [
        ('kind = "pnig"\ntargets = ["h"]\n', "checks[0].kind",
         "'pnig' is not a probe kind; did you mean 'ping'? choose one of ping, trace, tcp"),
        ('kind = "ping"\ntargets = ["h"]\nparams = { count = "lots" }\n', "checks[0].params.count",
         "expected an integer 1-1000, got 'lots'"),
        ('kind = "ping"\ntargets = ["h"]\nparams = { count = -3 }\n', "checks[0].params.count",
         "-3 is out of range; expected an integer 1-1000"),
        ('kind = "ping"\ntargets = ["h"]\nparams = { cuont = 3 }\n', "checks[0].params.cuont",
         "unknown param for a ping check; did you mean 'count'? known: count, family"),
        ('kind = "ping"\ntargets = ["h"]\nparams = { count = 30 }\n', "checks[0].params.count",
         "count=30 × interval=0.2s does not fit the check's timeout of 5s"),
        ('kind = "tcp"\ntargets = ["h"]\nparams = { port = "http" }\n', "checks[0].params.port",
         "expected an integer 1-65535, got 'http'"),
        ('kind = "tcp"\ntargets = ["h:http"]\n', "checks[0].targets[0]",
         "'h:http': port 'http' is not a number 1-65535"),
        ('kind = "tcp"\ntargets = ["h"]\n', "checks[0].targets[0]",
         "'h' has no port; write host:port"),
        ('kind = "http"\ntargets = ["http://[::1"]\n', "checks[0].targets[0]",
         "'http://[::1' is not a valid URL (Invalid IPv6 URL)"),
        ('kind = "http"\ntargets = ["ftp://h/"]\n', "checks[0].targets[0]",
         "scheme 'ftp' is not allowed; use http:// or https://"),
        ('kind = "http"\ntargets = ["h"]\nparams = { body_regex = "(" }\n',
         "checks[0].params.body_regex", "is not a valid regex"),
        ('kind = "ping"\ntargets = ["::::"]\n', "checks[0].targets[0]",
         "'::::' is not a valid IPv6 address"),
        ('kind = "ping"\ntargets = ["-flag"]\n', "checks[0].targets[0]",
         "'-flag' is not a valid host name"),
        ('kind = "ping"\ntargets = ["h:80"]\n', "checks[0].targets[0]", "drop ':80'"),
        ('kind = "trace"\ntargets = ["h"]\nparams = { protocol = "tcpp" }\n',
         "checks[0].params.protocol", "expected one of 'icmp', 'udp', 'tcp'"),
        ('kind = "udp"\ntargets = ["h:53"]\nparams = { payload_hex = "zz" }\n',
         "checks[0].params.payload_hex", "'zz' is not hex"),
        ('kind = "tls"\ntargets = ["h"]\nparams = { server_name = "a b" }\n',
         "checks[0].params.server_name", "'a b' is not a valid host name"),
        ('kind = "ping"\ntarget_tags = ["no spaces"]\n', "checks[0].target_tags[0]",
         "not a valid tag"),
    ],
)
def test_check_errors_name_file_key_and_what_is_allowed(tmp_path: Path, check: str, key: str,
                                                       words: str) -> None:
    path = write(tmp_path, MINIMAL + CHECK + check)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (error,) = info.value.errors  # type: ignore[attr-defined]
    line = str(error)
    assert "\n" not in line
    assert line.startswith(f"{path}: {key}: "), line
    assert words in line


@pytest.mark.parametrize(
    ("seed", "words"),
    [("::::", "'::::' is not a valid IPv6 address"),
     ("a b c:1", "'a b c' is not a valid host name"),
     ("-flag", "'-flag' is not a valid host name"),
     ("[::1", "opens '[' without closing it"),
     ("h:", "has an empty port"),
     ("h:http", "bad port 'http'")],
)
def test_seed_syntax_errors(tmp_path: Path, seed: str, words: str) -> None:
    path = write(tmp_path, MINIMAL + f'[mesh]\nseeds = ["ok.example:7946", "{seed}"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "mesh.seeds[1]"
    assert words in str(info.value) and str(path) in str(info.value)


def test_valid_checks_of_every_kind_pass(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + """
[[checks]]
name = "p"
kind = "ping"
targets = ["10.0.0.1", "fd00::1", "[fd00::2]", "host-1.example.com", "db_1"]
params = { count = 3, interval = 0.5, family = "ipv6" }
[[checks]]
name = "t"
kind = "tcp"
targets = ["10.0.0.1:22", "[::1]:7946", "db"]
params = { port = 5432 }
[[checks]]
name = "u"
kind = "udp"
target_tags = ["mesh"]
params = { mode = "echo" }
[[checks]]
name = "h"
kind = "http"
targets = ["https://[::1]:8443/health?x=1", "example.com", "example.com:8080"]
params = { expect_status = [200, 204], headers = { Host = "x" } }
[[checks]]
name = "r"
kind = "trace"
targets = ["10.0.0.1"]
params = { protocol = "tcp", port = 443 }
[[checks]]
name = "s"
kind = "tls"
targets = ["example.com", "example.com:8443"]
params = { min_days = 30 }
"""))
    assert [c.kind for c in cfg.checks] == ["ping", "tcp", "udp", "http", "trace", "tls"]


def test_every_error_is_reported_at_once_one_line_each(tmp_path: Path) -> None:
    path = write(tmp_path, """
[node]
name = "n1"
nmae = "typo"
[listen]
address = "127.0.0.2"
udp_port = 70000
[mesh]
seeds = ["-flag"]
[[checks]]
name = "a"
kind = "pnig"
targets = ["h"]
[[checks]]
name = "b"
kind = "ping"
targets = ["h b"]
params = { count = "lots", cuont = 1 }
""")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    keys = [e.key for e in info.value.errors]  # type: ignore[attr-defined]
    assert keys == ["node.nmae", "listen.udp_port", "mesh.seeds[0]", "checks[0].kind",
                    "checks[1].params.cuont", "checks[1].params.count", "checks[1].targets[0]"]
    lines = str(info.value).splitlines()
    assert len(lines) == len(keys) and all(line.startswith(f"{path}: ") for line in lines)


# --- plugins declare their params ---------------------------------------------------------------


class DeclaringPlugin:
    name = "dns"
    version = "1.0"
    params: ClassVar[dict[str, Param]] = {
        "record": Param((str,), "record type", choices=("A", "AAAA")),
        "retries": Param((int,), "tries", low=0, high=5),
    }

    def check_target(self, target: str, params: dict[str, object]) -> str | None:
        return None if target.endswith(".") else f"{target!r} must be a fully qualified name"

    async def probe(self, request: PluginRequest) -> PluginResult:
        return request.result(True)


class QuietPlugin:
    name = "quiet"
    version = "1.0"

    async def probe(self, request: PluginRequest) -> PluginResult:
        return request.result(True)


@pytest.fixture
def plugins() -> Iterator[None]:
    registry = default_registry()
    registry.add_plugin("dns", DeclaringPlugin())
    registry.add_plugin("quiet", QuietPlugin())
    registry.plugin_errors["broken"] = "ImportError: no module named 'x'"
    yield
    for kind in ("dns", "quiet"):
        registry.plugins.pop(kind)
    registry.plugin_errors.pop("broken")


@pytest.mark.parametrize(
    ("check", "key", "words"),
    [('kind = "dns"\ntargets = ["example.com."]\nparams = { record = "MX" }\n',
      "checks[0].params.record", "'MX' is not allowed; expected one of 'A', 'AAAA'"),
     ('kind = "dns"\ntargets = ["example.com."]\nparams = { retries = 9 }\n',
      "checks[0].params.retries", "9 is out of range; expected an integer 0-5"),
     ('kind = "dns"\ntargets = ["example.com."]\nparams = { recrod = "A" }\n',
      "checks[0].params.recrod", "unknown param for a dns check; did you mean 'record'?"),
     ('kind = "dns"\ntargets = ["example.com"]\n', "checks[0].targets[0]",
      "must be a fully qualified name"),
     ('kind = "broken"\ntargets = ["h"]\n', "checks[0].kind",
      "the 'broken' probe plugin is installed but failed to load (ImportError"),
     ('kind = "dsn"\ntargets = ["h"]\n', "checks[0].kind", "did you mean 'dns'?")],
)
def test_plugin_params_are_checked_as_declared(tmp_path: Path, plugins: None, check: str,
                                              key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + CHECK + check))
    assert info.value.key == key
    assert words in str(info.value)


def test_plugin_without_declared_params_gets_them_unchecked(tmp_path: Path,
                                                           plugins: None) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + CHECK + 'kind = "quiet"\ntargets = ["any"]\n'
                            'params = { anything = [1, 2] }\n'))
    assert cfg.checks[0].params == {"anything": [1, 2]}
    cfg = load_config(write(tmp_path, MINIMAL + CHECK + 'kind = "dns"\n'
                            'targets = ["example.com."]\nparams = { record = "AAAA" }\n'))
    assert cfg.checks[0].kind == "dns"
