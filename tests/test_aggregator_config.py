"""The aggregator's config: defaults, paths relative to the file, environment overrides, the
README's example, and errors naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aggregator.config import ServerConfig, load_config
from meshmon.configload import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "agg.toml"
    path.write_text('[aggregator.tls]\ncert = "certs/agg.crt"\n')
    cfg = load_config(path, environ={})
    assert (cfg.address, cfg.port, cfg.database_url) == ("0.0.0.0", 7947, "")
    assert cfg.tls.cert == tmp_path / "certs" / "agg.crt"
    assert cfg.tls.ca_cert == tmp_path / "certs" / "ca.crt"  # defaults too, from the file
    assert cfg.retention.days("raw_days") == 30.0 and cfg.query.raw_max_range == 7200.0


def test_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "agg.toml"
    path.write_text('[aggregator]\ndatabase_url = "host=db"\n')
    cfg = load_config(path, environ={"MESHMON_DATABASE_URL": "postgresql://u:p@db/m",
                                     "MESHMON_CERT": "x/node.crt",
                                     "MESHMON_AGGREGATOR_DATA": "/srv/agg"})  # fmt: skip
    assert cfg.database_url == "postgresql://u:p@db/m"
    assert cfg.tls.cert == Path("x/node.crt").absolute()
    assert cfg.data_dir == Path("/srv/agg")


def test_retention_zero_keeps_for_ever_and_levels_must_not_shrink(tmp_path: Path) -> None:
    path = tmp_path / "agg.toml"
    path.write_text("[aggregator.retention]\nraw_days = 0\nminute_days = 0\nhour_days = 0\n")
    assert load_config(path, environ={}).retention.days("hour_days") is None
    path.write_text("[aggregator.retention]\nraw_days = 0\nminute_days = 90\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "aggregator.retention.minute_days: 90 days is shorter than raw_days (for ever" \
        in str(info.value)


def test_the_readme_example_is_valid(tmp_path: Path) -> None:
    text = README.read_text()
    section = text[text.index("## The aggregator"):]
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example is not None
    path = tmp_path / "aggregator.toml"
    path.write_text(example.group(1))
    cfg = load_config(path, environ={})
    assert isinstance(cfg, ServerConfig)
    assert cfg.query.minute_max_range == 3 * 86400 and cfg.rollups.hour_interval == 300
