"""pyproject promises numpy>=1.26: serving images pinned below numpy 2 are common. numpy
1.x casts by value (a float64 scalar beside a float32 array computes in float32), so
code that is right on numpy 2 can be wrong there: head diversity of float32 weights was
NaN wherever a row had padding. This runs the pure core's tests on numpy 1.26.4,
installed from PyPI into a folder of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from peers import unavailable

REPO = Path(__file__).resolve().parents[1]
FLOOR = "numpy==1.26.4"
CORE_TESTS = ["tests/test_metrics.py", "tests/test_sketch.py", "tests/test_stats.py", "tests/test_topk.py"]


@pytest.fixture(scope="module")
def old_numpy(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("numpy-floor")
    got = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install",
                          "--no-deps", "--only-binary=:all:", "--target", str(target), FLOOR],
                         capture_output=True, text=True, timeout=300)
    if got.returncode != 0:
        unavailable(f"could not install {FLOOR} from PyPI: {got.stderr.strip()[-300:]}")
    return target


def test_the_pure_core_is_right_on_the_oldest_numpy_it_allows(old_numpy):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(old_numpy), str(REPO)])}
    seen = subprocess.run([sys.executable, "-c", "import numpy; print(numpy.__version__)"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert seen.stdout.strip() == FLOOR.split("==")[1], seen.stderr
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *CORE_TESTS],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
