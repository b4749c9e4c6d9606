"""`make serve` installs what the server needs and no more; `make install` (which `make test`
runs) adds the developer tools without installing the rest again. Run on a copy of the
checkout with a venv of its own, through the real Makefile and pip (pip's cache makes the
second and later runs quicker)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from callbridge.config import setting_names

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
DEV_TOOLS = {"pytest", "ruff", "mypy", "hypothesis"}
TESTING_EXTRA = {"jsonschema", "pyyaml"}  # the fake agent's, in `make install` only


def copy_checkout(dest: Path) -> Path:
    for name in ("Makefile", "pyproject.toml", "setup.py", "requirements.lock", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(
        ROOT / "src",
        dest / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.egg-info"),
    )
    return dest


def make(tree: Path, target: str) -> subprocess.CompletedProcess[str]:
    # Our settings from the environment would win over the tree's .env; an outer make's
    # flags would leak into this one.
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in setting_names()
        and not k.upper().startswith(("CALLBRIDGE_", "TWILIO_", "ASSEMBLYAI_", "MAKE", "MFLAGS"))
    }
    return subprocess.run(
        ["make", target, f"PYTHON={sys.executable}"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def installed(tree: Path) -> set[str]:
    listed = subprocess.run(
        [tree / ".venv/bin/python", "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {package["name"].lower() for package in json.loads(listed.stdout)}


def compiled_fast_path(tree: Path) -> list[Path]:
    return list((tree / "src/callbridge/fast_path").glob("_compiled*.so"))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_serve_installs_the_server_only_then_make_install_adds_the_tools(
    tmp_path: Path,
) -> None:
    tree = copy_checkout(tmp_path)
    # Configured so that the server stops at once, once it is installed and started.
    (tree / ".env").write_text("PORT=not-a-port\n")

    served = make(tree, "serve")
    assert "Installing callbridge and its dependencies into .venv" in served.stdout, served
    assert "developer tools" not in served.stdout
    assert "callbridge: configuration error: PORT:" in served.stderr, served.stderr  # it ran
    packages = installed(tree)
    assert {"callbridge", "aiohttp", "picows", "twilio"} <= packages
    assert packages & DEV_TOOLS == set(), "make serve installed developer tools"
    assert packages & TESTING_EXTRA == set(), "make serve installed the testing extra"
    compiled = compiled_fast_path(tree)
    if shutil.which("cc") or shutil.which("gcc"):
        assert len(compiled) == 1, "make serve built no compiled fast path"
    built = [path.stat().st_mtime_ns for path in compiled]

    tools = make(tree, "install")
    assert tools.returncode == 0, tools.stdout + tools.stderr
    assert "Installing the developer tools" in tools.stdout
    assert "Installing callbridge" not in tools.stdout, "callbridge was installed again"
    assert installed(tree) >= DEV_TOOLS | TESTING_EXTRA
    assert [path.stat().st_mtime_ns for path in compiled] == built, "callbridge was rebuilt"

    again = make(tree, "serve")
    assert "Installing" not in again.stdout, again.stdout
    assert "callbridge: configuration error: PORT:" in again.stderr
