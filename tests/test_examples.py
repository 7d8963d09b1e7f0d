"""The shipped example configs stay valid as the config schema evolves."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshmon.config import load_config

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").rglob("*.toml"))
CONFIGS = [p for p in EXAMPLES if p.name != "pyproject.toml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_example_config_is_valid(path: Path) -> None:
    config = load_config(path)
    assert config.node.name
    assert config.checks, "examples should show checks"
