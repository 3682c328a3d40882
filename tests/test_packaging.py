"""What `pip install attention-monitor` gives: the wheel alone must run attnmon.

A source checkout hides files the wheel leaves out (the migrations were in a top-level
folder outside every package: `db upgrade` from an installed wheel found none), so this
builds the wheel from the tracked files, installs it into a folder of its own and runs
it from elsewhere, with the repository off the path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the folder it is installed in)."""
    root = tmp_path_factory.mktemp("wheel")
    src, out, target = root / "src", root / "dist", root / "site"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True, timeout=60).stdout.split("\n")
    for name in filter(None, files):
        if name.startswith(("tests/", "benchmarks/")) or not (REPO / name).is_file():
            continue
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes((REPO / name).read_bytes())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
                   check=True, timeout=300, capture_output=True)
    (wheel,) = out.glob("*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300, capture_output=True)
    return wheel, target


def _attnmon(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # the installed copy first; the dependencies come from this venv's site-packages
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("ATTNMON_STORE_URL", None)
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_wheel_carries_the_migrations_rules_and_sql(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    versions = sorted(p.name for p in (REPO / "monitor/store/migrations/versions").glob("*.py"))
    assert versions and {f"monitor/store/migrations/versions/{v}" for v in versions} <= names
    assert {"monitor/store/migrations/env.py", "monitor/store/migrations/script.py.mako",
            "alerts/rules/default.yaml", "dashboards/readonly_role.sql"} <= names
    assert not any(n.startswith(("tests/", "alembic/")) for n in names)


def test_the_installed_wheel_creates_a_store_and_exports_dashboards(installed, tmp_path):
    _, target = installed
    url = f"sqlite:///{tmp_path / 'store.db'}"
    done = _attnmon(target, tmp_path, "db", "upgrade", "--store", url)
    assert done.returncode == 0, done.stderr
    assert "(head)" in done.stdout
    where = subprocess.run([sys.executable, "-c", "import monitor; print(monitor.__file__)"], cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True,
                           timeout=60).stdout
    assert where.startswith(str(target)), where  # the installed copy ran, not the checkout
    current = _attnmon(target, tmp_path, "db", "current", "--store", url)
    assert current.returncode == 0 and "(head)" in current.stdout, current.stderr
    exported = _attnmon(target, tmp_path, "dashboards", "export", "--out", str(tmp_path / "out"), "--store", url)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "out" / "readonly_role.sql").read_text().strip()
    assert list((tmp_path / "out" / "dashboards").glob("*.json"))


def test_the_readme_generator_says_it_needs_a_checkout(installed, tmp_path):
    """monitor.cli_docs rewrites the checkout's README.md; installed, it has none to read
    (a traceback of FileNotFoundError before)."""
    _, target = installed
    done = subprocess.run([sys.executable, "-m", "monitor.cli_docs", "--check"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "source checkout" in done.stderr and "Traceback" not in done.stderr, done.stderr
