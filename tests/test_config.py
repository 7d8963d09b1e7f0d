"""Config loading: every error class names the file and the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshmon.config import load_config, split_host_port
from meshmon.configload import ConfigError, parse_duration, parse_size


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
