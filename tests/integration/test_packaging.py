"""The built wheel carries pipelines/, rules/ and migrations/ and works from any directory; the
Dockerfile copies only files that exist."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True,
    )
    (found,) = out.glob("monitorme-*.whl")
    return found


def test_wheel_ships_the_data_directories(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("pipelines", "migrations"):
        shipped = {p.name for p in (ROOT / folder).iterdir() if p.is_file()}
        packed = {n.rsplit("/", 1)[-1] for n in names if n.startswith(f"monitorme/_data/{folder}/")}
        assert shipped <= packed, folder
    assert "monitorme/_data/rules/README.md" in names
    assert {"monitorme/web/static/station.html", "monitorme/web/static/station.js"} <= names


def test_installed_package_works_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITORME_")}
    env["PYTHONPATH"] = str(target)  # ahead of site-packages, so the editable checkout is not used
    probe = "import monitorme, sys; print(monitorme.__file__)"
    where = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr
    check = subprocess.run([sys.executable, "-m", "monitorme", "check"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "8 vitals" in check.stdout


def test_dockerfile_copies_files_that_exist() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY ") and "--from" not in line]
    sources = [src for group in copies for src in group]
    assert sources, "no COPY lines"
    for src in sources:
        assert (ROOT / src).exists(), src
    assert any(line.startswith("USER ") and "root" not in line for line in lines)
