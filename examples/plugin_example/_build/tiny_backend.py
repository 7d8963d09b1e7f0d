"""A tiny PEP 517/660 build backend using only the standard library.

Why: this example must install offline, in CI and on air-gapped hosts, where ``setuptools`` may
be too old to build wheels without the ``wheel`` package. A real plugin can use any backend
(setuptools, hatchling, flit); nothing in meshmon depends on this file.

It builds a wheel of the package named in ``[tool.tiny-backend] package`` and, for editable
installs, a wheel holding a ``.pth`` file that points at this folder.
"""

from __future__ import annotations

import base64
import hashlib
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names() -> tuple[str, str, str]:
    data = _project()
    project = data["project"]
    dist = project["name"].replace("-", "_")
    return dist, project["version"], data["tool"]["tiny-backend"]["package"]


def _metadata() -> str:
    project = _project()["project"]
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}",
             f"Version: {project['version']}", f"Summary: {project.get('description', '')}",
             f"Requires-Python: {project.get('requires-python', '>=3')}"]
    lines += [f"Requires-Dist: {dep}" for dep in project.get("dependencies", [])]
    return "\n".join(lines) + "\n"


def _entry_points() -> str:
    groups = _project()["project"].get("entry-points", {})
    out = []
    for group, entries in groups.items():
        out.append(f"[{group}]")
        out += [f"{name} = {value}" for name, value in entries.items()]
        out.append("")
    return "\n".join(out)


def _write_wheel(directory: str, files: dict[str, bytes]) -> str:
    dist, version, _ = _names()
    info = f"{dist}-{version}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = _metadata().encode()
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: tiny_backend\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    files[f"{info}/entry_points.txt"] = _entry_points().encode()
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    name = f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(Path(directory) / name, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return name


def get_requires_for_build_wheel(config_settings=None):  # noqa: D103 - PEP 517 hook
    return []


get_requires_for_build_editable = get_requires_for_build_wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):  # noqa: D103
    _, _, package = _names()
    files = {str(p.relative_to(ROOT)): p.read_bytes()
             for p in sorted((ROOT / package).rglob("*.py"))}
    return _write_wheel(wheel_directory, files)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):  # noqa: D103
    dist, _, _ = _names()
    return _write_wheel(wheel_directory, {f"__editable__{dist}.pth": f"{ROOT}\n".encode()})
