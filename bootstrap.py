#!/usr/bin/env python3
"""Set up meshmon in ./.venv on first use, then run the demo mesh or the tests.

    python3 bootstrap.py demo     # a live local mesh with an aggregator, in the TUI (q stops it)
    python3 bootstrap.py test     # the test suite (extra arguments go to pytest)
    python3 bootstrap.py shell    # print how to use the installed `meshmon` command

Needs nothing but Python 3.11+. The environment is rebuilt when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".meshmon-installed"


def ensure_env() -> None:
    """Create the venv and install meshmon with its dev extras if needed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this script runs before anything is checked
        sys.exit(f"meshmon needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    if not (BIN / "python").exists():
        print("bootstrap: creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("bootstrap: installing meshmon and its dependencies into .venv (first run takes a "
          "minute) ...", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.run([*pip, "-q", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-q", "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(digest)
    print("bootstrap: ready", flush=True)


def main() -> int:
    args = sys.argv[1:]
    if not args or args[0] not in ("demo", "test", "shell"):
        print(__doc__)
        return 2
    try:
        ensure_env()
    except subprocess.CalledProcessError as exc:
        print(f"bootstrap: installing failed ({exc}); check network access to PyPI and retry",
              file=sys.stderr)
        return 1
    os.chdir(ROOT)
    if args[0] == "demo":
        cmd = [str(BIN / "meshmon"), "demo", *args[1:]]
    elif args[0] == "test":
        cmd = [str(BIN / "python"), "-m", "pytest", *args[1:]]
    else:
        print(f"meshmon is installed: run {BIN / 'meshmon'} --help (or: source .venv/bin/activate)")
        return 0
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
