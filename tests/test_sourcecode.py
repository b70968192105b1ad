"""Lint and type checks run as ordinary tests (asyncpg's habit), plus the layering rule of STYLE.md."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "monitorme"


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_is_clean() -> None:
    result = subprocess.run(["ruff", "check", "--quiet", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    pytest.importorskip("mypy")
    result = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_is_pure(path: Path) -> None:
    """core/ does no I/O: no asyncio, sockets, database or broker clients, and never imports outward."""
    forbidden = {"asyncio", "socket", "asyncpg", "aiomqtt", "paho", "aiohttp", "subprocess", "threading"}
    outward = ("monitorme.adapters", "monitorme.web", "monitorme.runtime", "monitorme.demo", "monitorme.sim")
    for module in _imports(path):
        assert module.split(".")[0] not in forbidden, f"{path.name} imports {module}"
        assert not module.startswith(outward), f"{path.name} imports {module}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "adapters").glob("*.py")), ids=lambda p: p.name)
def test_adapters_do_not_import_the_runtime_or_web(path: Path) -> None:
    for module in _imports(path):
        assert not module.startswith(("monitorme.runtime", "monitorme.web", "monitorme.demo")), module
